//! Talking to a running `dev`: `dynamo-server dev restart 3` from any
//! terminal connects to the Unix socket `<data_dir>/dev.sock`, sends one
//! line (`restart 3`, `stop 3`, `status`, `add`) and prints the answer. A
//! node restarted or added this way is `dev`'s child: reported if it
//! exits, and stopped with the others on Ctrl-C.
//!
//! The answer's first line is `ok` or `error`; the rest is for the person
//! who asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The socket's file name in the data directory.
pub const SOCKET: &str = "dev.sock";

/// Longest a request line may be.
const MAX_REQUEST: u64 = 256;

/// Longest a client waits for an answer: a restart waits for the old
/// process to stop (at most 10 s) and the new one to answer (at most 30 s);
/// an added node must answer and be known to the others (30 s each).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(70);

/// What a client asks of `dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Request {
    /// Restart node N (stop it first if it runs) as dev's child, and wait
    /// until it answers.
    Restart {
        /// The node's id.
        node: u64,
    },
    /// Stop node N (SIGTERM: it finishes requests and flushes its store).
    Stop {
        /// The node's id.
        node: u64,
    },
    /// Show every node's state and PID.
    Status,
    /// Start one more node (the next id, the next ports) with the running
    /// nodes as its gossip seeds, and wait until the cluster knows it. It
    /// joins as a member owning nothing: `cluster join N`, `cluster plan`
    /// and `cluster commit` give it partitions.
    Add,
}

impl Request {
    /// The request as one line.
    pub fn to_line(self) -> String {
        match self {
            Request::Restart { node } => format!("restart {node}"),
            Request::Stop { node } => format!("stop {node}"),
            Request::Status => "status".to_string(),
            Request::Add => "add".to_string(),
        }
    }

    /// Parses a line written by [`Request::to_line`] (or typed by hand).
    ///
    /// # Errors
    /// A message listing the requests understood.
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = |w: &str| w.parse::<u64>().map_err(|_| format!("{w:?} is not a node id"));
        match words.as_slice() {
            ["restart", n] => Ok(Request::Restart { node: node(n)? }),
            ["stop", n] => Ok(Request::Stop { node: node(n)? }),
            ["status"] => Ok(Request::Status),
            ["add"] => Ok(Request::Add),
            _ => Err(format!("unknown request {line:?}; use `restart N`, `stop N`, `status` or `add`")),
        }
    }
}

/// A request received, and where its answer goes: `Ok(text)` or `Err(why)`.
pub type Incoming = (Request, oneshot::Sender<Result<String, String>>);

fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Binds the control socket (replacing a stale one: the caller holds the
/// data directory's lock).
///
/// # Errors
/// The socket cannot be bound, naming it.
pub fn listen(data_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).with_context(|| format!("cannot create the control socket {}", path.display()))
}

/// Removes the socket file.
pub fn remove(data_dir: &Path) {
    let _ = std::fs::remove_file(socket_path(data_dir));
}

/// Accepts clients forever, handing each request to `requests`.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Incoming>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: try again shortly, without spinning.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let _ = answer(stream, requests).await;
        });
    }
}

async fn answer(stream: UnixStream, requests: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line).await?;
    let result = match Request::parse(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if requests.send((request, tx)).await.is_err() {
                Err("dev is stopping".to_string())
            } else {
                rx.await.unwrap_or_else(|_| Err("dev is stopping".to_string()))
            }
        }
        Err(e) => Err(e),
    };
    let text = match result {
        Ok(text) => format!("ok\n{text}"),
        Err(text) => format!("error\n{text}"),
    };
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Sends `request` to the `dev` running on `data_dir` and returns its answer.
///
/// # Errors
/// No `dev` runs there, it did not answer in time, or it refused.
pub async fn send(data_dir: &Path, request: Request) -> anyhow::Result<String> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path).await.map_err(|e| {
        anyhow::anyhow!(
            "no `dynamo-server dev` is running on {} ({}: {e}); pass the --data-dir it was started with",
            data_dir.display(),
            path.display()
        )
    })?;
    stream.write_all(format!("{}\n", request.to_line()).as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(ANSWER_TIMEOUT, stream.read_to_string(&mut text))
        .await
        .with_context(|| format!("dev did not answer within {} s", ANSWER_TIMEOUT.as_secs()))??;
    match text.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => bail!("{}", rest.trim_end()),
        _ => bail!("unexpected answer from dev: {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_what_is_understood() {
        for r in [Request::Restart { node: 3 }, Request::Stop { node: 1 }, Request::Status, Request::Add] {
            assert_eq!(Request::parse(&r.to_line()), Ok(r));
        }
        assert_eq!(Request::parse(" restart  2 \n"), Ok(Request::Restart { node: 2 }));
        assert!(Request::parse("restart x").unwrap_err().contains("not a node id"));
        assert!(Request::parse("reboot").unwrap_err().contains("restart N"));
    }
}

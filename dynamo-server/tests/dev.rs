//! `dynamo-server dev` as an operator uses it: the real binary, its
//! nodes as child processes on loopback, killed and restarted.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const EXE: &str = env!("CARGO_BIN_EXE_dynamo-server");
const DEADLINE: Duration = Duration::from_secs(60);

/// A running `dev`, its output collected as it comes.
struct Dev {
    child: Child,
    output: Arc<Mutex<String>>,
}

/// Four consecutive free ports for HTTP and four for peers (three nodes
/// and one `dev add`).
fn free_bases() -> (u16, u16) {
    let free = |base: u16| (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
    // Tests run in parallel: each call starts from its own place.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let seed = (std::process::id() as u16).wrapping_add(call.wrapping_mul(331));
    let mut candidates = (0..2000u16).map(|i| 20_000 + (seed.wrapping_add(i.wrapping_mul(7)) % 2000) * 20);
    let http = candidates.find(|&b| free(b)).expect("free HTTP ports");
    let peer = candidates.find(|&b| b != http && free(b)).expect("free peer ports");
    (http, peer)
}

impl Dev {
    fn start(data_dir: &Path, http: u16, peer: u16) -> Dev {
        Dev::start_with(data_dir, http, peer, &[])
    }

    fn start_with(data_dir: &Path, http: u16, peer: u16, extra: &[&str]) -> Dev {
        let mut child = Command::new(EXE)
            .args(["dev", "--durability", "buffered", "--data-dir"])
            .arg(data_dir)
            .args(["--http-port", &http.to_string(), "--peer-port", &peer.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dev");
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for stream in streams {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let dev = Dev { child, output };
        dev.wait_for("Ctrl-C stops every node");
        dev
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn wait_for(&self, text: &str) -> String {
        wait_until(&format!("dev to print {text:?}"), || self.output().contains(text).then(|| self.output()))
    }

    /// The PID of node `id`, from dev's banner.
    fn node_pid(&self, id: u64) -> i32 {
        let out = self.output();
        let line = out.lines().find(|l| l.trim_start().starts_with(&format!("node {id}  "))).expect("banner");
        line.split("pid ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/<pid>/stat`: (state, parent pid); `None` once the process is
/// reaped.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Gone or a zombie: not running any more.
fn has_exited(pid: i32) -> bool {
    proc_stat(pid).is_none_or(|(state, _)| state == 'Z')
}

fn dev_command(data_dir: &Path, request: &[&str]) -> Output {
    Command::new(EXE).arg("dev").args(request).arg("--data-dir").arg(data_dir).output().unwrap()
}

/// A JSON answer of GET `path` on 127.0.0.1:`port`, if it is a 200.
fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

fn healthy(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut answer = String::new();
    s.write_all(request.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// A node killed with SIGKILL is reported at once (which node, how, its
/// log) and reaped; `dev restart 3` brings it back as dev's own child,
/// which Ctrl-C then stops with the others; its log keeps both runs.
#[test]
fn dev_reports_a_killed_node_and_restarts_it_as_its_child() {
    let dir = tempfile::tempdir().unwrap();
    let (http, peer) = free_bases();
    let dev = Dev::start(dir.path(), http, peer);
    let node3 = dev.node_pid(3);
    assert_eq!(proc_stat(node3).map(|s| s.1), Some(dev.pid()), "node 3 is dev's child");

    kill(Pid::from_raw(node3), Signal::SIGKILL).unwrap();
    let out = dev.wait_for(&format!("node 3 (pid {node3}) exited: signal: 9 (SIGKILL)"));
    assert!(out.contains("node ready node=3"), "the report shows the log's last lines:\n{out}");
    assert!(out.contains("dev restart 3"), "the report says how to restart it:\n{out}");
    wait_until("dev to reap node 3", || proc_stat(node3).is_none().then_some(()));

    let restarted = dev_command(dir.path(), &["restart", "3"]);
    let text = String::from_utf8_lossy(&restarted.stdout).to_string();
    assert!(restarted.status.success(), "{text}{}", String::from_utf8_lossy(&restarted.stderr));
    let pid: i32 = text.split("pid ").nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    assert_eq!(proc_stat(pid).map(|s| s.1), Some(dev.pid()), "the restarted node is dev's child");
    assert!(healthy(http + 2), "restart answers once the node serves");
    let status = dev_command(dir.path(), &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&format!("running  pid {pid}")));

    let nodes = [dev.node_pid(1), dev.node_pid(2), pid];
    kill(Pid::from_raw(dev.pid()), Signal::SIGINT).unwrap();
    let mut dev = dev;
    let exit = dev.child.wait().unwrap();
    assert!(exit.success(), "{exit}: {}", dev.output());
    for pid in nodes {
        wait_until("every node to stop with dev", || has_exited(pid).then_some(()));
    }
    let log = std::fs::read_to_string(dir.path().join("node-3/node.log")).unwrap();
    assert_eq!(log.matches("starting node 3").count(), 2, "the log is appended:\n{log}");
    assert!(log.contains("store flushed; stopped"), "Ctrl-C stopped the restarted node cleanly:\n{log}");
}

/// SIGKILL of `dev` itself takes its nodes with it.
#[test]
fn nodes_stop_when_dev_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    let (http, peer) = free_bases();
    let dev = Dev::start(dir.path(), http, peer);
    let nodes = [dev.node_pid(1), dev.node_pid(2), dev.node_pid(3)];
    kill(Pid::from_raw(dev.pid()), Signal::SIGKILL).unwrap();
    for pid in nodes {
        wait_until("the nodes of a SIGKILLed dev to stop", || has_exited(pid).then_some(()));
    }
}

/// A second `dev` on the same data directory is refused, naming the
/// first one's PID, and leaves the running nodes and their logs alone; so
/// is one on the same ports, naming them.
#[test]
fn a_second_dev_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (http, peer) = free_bases();
    let dev = Dev::start(dir.path(), http, peer);
    let log = dir.path().join("node-1/node.log");
    let before = std::fs::metadata(&log).unwrap().len();

    let second = Command::new(EXE)
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--http-port", &http.to_string(), "--peer-port", &peer.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains(&format!("pid {}", dev.pid())), "{err}");
    assert!(std::fs::metadata(&log).unwrap().len() >= before, "the running node's log was truncated");

    let other = tempfile::tempdir().unwrap();
    let third = Command::new(EXE)
        .arg("dev")
        .arg("--data-dir")
        .arg(other.path())
        .args(["--http-port", &http.to_string(), "--peer-port", &peer.to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(!third.status.success());
    assert!(err.contains(&format!("127.0.0.1:{http} (node 1 HTTP)")), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{} (node 3 peer)", peer + 2)), "{err}");
    assert!(healthy(http), "the first dev's nodes keep serving");

    let nobody = dev_command(other.path(), &["restart", "1"]);
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(!nobody.status.success() && err.contains("no `dynamo-server dev` is running"), "{err}");
}

/// `dev add` starts node 4 as dev's child with the running nodes as its
/// seeds and no member list: the cluster knows it as a joining member at
/// once, `cluster join 4` + `commit` give it partitions, `dev status`
/// and `dev restart 4` know it, and Ctrl-C stops it with the others.
#[test]
fn dev_add_starts_a_node_that_joins_by_gossip() {
    let dir = tempfile::tempdir().unwrap();
    let (http, peer) = free_bases();
    let dev = Dev::start(dir.path(), http, peer);

    let added = dev_command(dir.path(), &["add"]);
    let text = String::from_utf8_lossy(&added.stdout).to_string();
    assert!(added.status.success(), "{text}{}", String::from_utf8_lossy(&added.stderr));
    let url = format!("http://127.0.0.1:{}", http + 3);
    assert!(text.starts_with("node 4 added: pid "), "{text}");
    assert!(text.contains(&format!(", {url}, log ")), "{text}");
    assert!(text.contains("cluster join 4") && text.contains("dev restart 4"), "{text}");
    let seeds: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", peer + i)).collect();
    assert!(text.contains(&format!("(seeds: {})", seeds.join(", "))), "{text}");
    let pid: i32 = text.split("pid ").nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    assert_eq!(proc_stat(pid).map(|s| s.1), Some(dev.pid()), "the added node is dev's child");
    dev.wait_for(&format!("node 4 added: pid {pid}"));

    // Its config: no member list, every running node a seed.
    let config = std::fs::read_to_string(dir.path().join("node-4/dynamo.toml")).unwrap();
    let config: dynamo_server::config::ServerConfig =
        toml::from_str(config.split_once("\n\n").unwrap().1).unwrap();
    assert!(config.members.is_empty(), "{config:?}");
    assert_eq!(config.cluster.seeds, seeds);
    assert_eq!((config.cluster.n, config.cluster.r, config.cluster.w), (3, 2, 2));

    // Node 1 already knows it (dev add waited for that), owning nothing.
    let members = get_json(http, "/admin/members").unwrap();
    let four = members["members"].as_array().unwrap().iter().find(|m| m["id"] == 4).cloned();
    assert_eq!(four.as_ref().map(|m| m["membership"].clone()), Some("joining".into()), "{members}");
    let status = String::from_utf8_lossy(&dev_command(dir.path(), &["status"]).stdout).to_string();
    assert!(status.contains(&format!("node 4  {url}  running  pid {pid}")), "{status}");

    let node1 = format!("http://127.0.0.1:{http}");
    for args in [&["join", "4"][..], &["commit"][..]] {
        let out = Command::new(EXE).arg("cluster").args(args).args(["--url", &node1]).output().unwrap();
        assert!(out.status.success(), "cluster {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_until("node 4 to own partitions and the move to settle", || {
        let cluster = get_json(http + 3, "/admin/cluster")?;
        let handoff = get_json(http + 3, "/admin/handoff")?;
        let me = cluster["members"].as_array()?.iter().find(|m| m["id"] == 4)?.clone();
        (me["partitions"].as_u64()? > 0 && handoff["settled"] == true).then_some(())
    });

    let restarted = dev_command(dir.path(), &["restart", "4"]);
    let text = String::from_utf8_lossy(&restarted.stdout).to_string();
    assert!(restarted.status.success(), "{text}{}", String::from_utf8_lossy(&restarted.stderr));
    let new_pid: i32 = text.split("pid ").nth(1).and_then(|s| s.split(',').next()).unwrap().parse().unwrap();
    assert!(healthy(http + 3));

    let nodes = [dev.node_pid(1), dev.node_pid(2), dev.node_pid(3), new_pid];
    kill(Pid::from_raw(dev.pid()), Signal::SIGINT).unwrap();
    let mut dev = dev;
    assert!(dev.child.wait().unwrap().success(), "{}", dev.output());
    for pid in nodes {
        wait_until("every node, the added one too, to stop with dev", || has_exited(pid).then_some(()));
    }
}

/// `dev` secures its peer links by default (each node's log says so), and
/// with `--auth` its HTTP API takes the admin token it wrote and refuses
/// requests without it.
#[test]
fn dev_runs_secured_and_with_auth_asks_for_its_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let (http, peer) = free_bases();
    let dev = Dev::start_with(dir.path(), http, peer, &["--auth"]);
    let out = dev.output();
    assert!(out.contains("peer links: mutual TLS"), "{out}");
    assert!(out.contains("admin token in"), "{out}");
    for id in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{id}/node.log"))).unwrap();
        assert!(log.contains("peer links: mutual TLS 1.3"), "node {id}:\n{log}");
    }
    let url = format!("http://127.0.0.1:{http}");
    let token = dir.path().join("admin.token");
    let run = |args: &[&str]| Command::new(EXE).args(args).env_remove("DYNAMO_TOKEN").output().unwrap();
    let refused = run(&["put", "k", "v", "--url", &url]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("requires a token"), "{refused:?}");
    let token = token.to_str().unwrap();
    // The write crosses the secured peer links to two replicas at least;
    // once every replica has it, a read at R=3 through another node finds
    // it (a peer still in its connect backoff from the nodes' start may
    // miss the write at first; read repair and hints bring it).
    let put = run(&["put", "k", "v", "--url", &url, "--w", "2", "--token-file", token]);
    assert!(put.status.success(), "{put:?}");
    let other = format!("http://127.0.0.1:{}", http + 2);
    wait_until("a read at R=3 to find the write", || {
        let get = run(&["get", "k", "--url", &other, "--r", "3", "--token-file", token]);
        (get.status.success() && String::from_utf8_lossy(&get.stdout).trim() == "v").then_some(())
    });
}

//! One node as a child process of `dev`: started with its config, its
//! output appended to its log, and tied to `dev`'s life.
//!
//! Each node runs in its own process group, so a terminal's Ctrl-C goes to
//! `dev` alone, which stops the nodes itself. Each child asks the kernel
//! for SIGTERM when its parent dies
//! (`PR_SET_PDEATHSIG`), so the nodes stop cleanly even when `dev` is
//! SIGKILLed. The kernel sends it when the *thread* that started the
//! child exits: `dev` starts nodes from the thread that runs its
//! supervisor loop (the main thread, under `block_on`), which lives as
//! long as `dev` does.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The environment variable tokio's runtime reads its worker count from.
pub const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// How many tokio worker threads each of `nodes` nodes on a machine of
/// `cores` cores should run: the cores shared among the nodes, at least
/// one. `None` when the user chose already (`preset`, the value of
/// [`WORKER_THREADS_ENV`] in `dev`'s environment), which the nodes then
/// inherit.
///
/// A node alone on its machine runs one worker per core, tokio's default.
/// Three nodes doing the same on one machine run three times as many
/// workers as there are cores, and pay for it in cross-thread wake-ups and
/// context switches: with 2 cores and 3 nodes, one worker each cost 7–12%
/// less server CPU per operation than two on buffered YCSB-A at 64
/// clients, relative to the load generator's own CPU per operation in the
/// same runs (measured for issue 14; the README's benchmark section).
pub fn worker_threads(cores: usize, nodes: usize, preset: Option<&std::ffi::OsStr>) -> Option<usize> {
    if preset.is_some() {
        return None;
    }
    Some((cores / nodes.max(1)).max(1))
}

/// Starts `exe serve --config <config>` with its output appended to `log`,
/// with `workers` tokio worker threads when given (see [`worker_threads`]).
///
/// # Errors
/// The log cannot be opened or the process cannot be started.
pub fn spawn(
    exe: &Path,
    node: u64,
    config: &Path,
    log: &Path,
    workers: Option<usize>,
) -> anyhow::Result<Child> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    writeln!(out, "--- dynamo-server dev: starting node {node} (dev pid {}) ---", std::process::id())
        .with_context(|| format!("cannot write {}", log.display()))?;
    let parent = nix::unistd::getpid();
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: Ctrl-C in the terminal reaches `dev` only,
        // which then stops every node in order (and reports none of them).
        .process_group(0)
        .kill_on_drop(false);
    if let Some(workers) = workers {
        command.env(WORKER_THREADS_ENV, workers.to_string());
    }
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (prctl and getppid are plain system calls) and nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent may have died before the signal was armed.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("dev exited while starting the node"));
            }
            Ok(())
        });
    }
    command.spawn().with_context(|| format!("cannot start node {node} ({})", exe.display()))
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

/// The last `lines` lines of the file at `path` (read from its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| l.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail(&path, 2), ["line 98", "line 99"]);
        assert!(tail(&dir.path().join("missing"), 5).is_empty());
    }

    #[test]
    fn nodes_share_the_cores_and_a_users_choice_wins() {
        assert_eq!(worker_threads(2, 3, None), Some(1));
        assert_eq!(worker_threads(16, 3, None), Some(5));
        assert_eq!(worker_threads(8, 1, None), Some(8));
        assert_eq!(worker_threads(1, 0, None), Some(1));
        assert_eq!(worker_threads(16, 3, Some(std::ffi::OsStr::new("4"))), None);
    }
}

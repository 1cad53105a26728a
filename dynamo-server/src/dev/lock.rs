//! One `dev` per data directory: an exclusive `flock` on
//! `<data_dir>/dev.lock`, which names the holder's PID. The kernel drops
//! the lock when the holder exits, however it exits (SIGKILL included),
//! so a stale file never blocks a new `dev`.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another `dynamo-server dev` (pid {holder}) is running on {dir}; stop it (Ctrl-C there), or use another --data-dir"
    )]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The PID written by the holder ("unknown" if unreadable).
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct DevLock {
    _lock: Flock<File>,
}

/// Locks `dir` for this process and writes its PID in the lock file.
///
/// # Errors
/// [`LockError::Held`] naming the holder's PID, or an I/O failure.
pub fn lock(dir: &Path) -> Result<DevLock, LockError> {
    let path = dir.join("dev.lock");
    let io = |source| LockError::Io { path: path.clone(), source };
    // No truncation before the lock is ours: the file names the holder.
    let file =
        OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "unknown".to_string() } else { holder.to_string() };
            return Err(LockError::Held { dir: dir.to_path_buf(), holder });
        }
        Err((_, errno)) => return Err(io(errno.into())),
    };
    lock.set_len(0).map_err(io)?;
    lock.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(lock, "{}", std::process::id()).map_err(io)?;
    Ok(DevLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        // flock locks belong to the open file: a second open in this
        // process conflicts like another process would.
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        lock(dir.path()).unwrap();
    }
}

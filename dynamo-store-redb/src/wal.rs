//! The write-ahead log beside the redb file: group commit at the cost of
//! one append.
//!
//! A durable redb commit rewrites every B-tree page the batch touched and
//! fsyncs them (about 2.5 ms for 64 scattered puts on this project's
//! benchmark machine); a non-durable one costs a tenth of that but is lost
//! in a crash. With the log, every batch is first appended to `dynamo.wal`
//! as one record (and, in `Fsync` mode, `fdatasync`ed), then committed to
//! redb non-durably. A checkpoint (one durable redb commit, which also
//! records the last sequence number it covers) makes everything before it
//! durable in the redb file, after which the log is written again from its
//! start. Opening the store replays the records after the last checkpoint.
//! This is the WAL-plus-checkpoint shape of PostgreSQL and of LevelDB's
//! log, with redb as the checkpointed image.
//!
//! # Record format
//!
//! Little-endian; a record is a 20-byte header and a payload:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, at least 1 |
//! | 8 | sequence number |
//! | 8 | xxh3-64 of the sequence number's 8 bytes and the payload |
//! | n | operations: tag (0 put, 1 delete), table index, key length (u32), key, and for a put value length (u32), value |
//!
//! # Which records count
//!
//! Replay reads records from offset 0 while they check out: the header is
//! whole, the payload lies inside the file, the checksum matches, and each
//! sequence number is one more than the one before. The first record that
//! fails ends the log: a torn append (a crash mid-write, never
//! acknowledged) or a record of an earlier pass over the file, whose
//! sequence numbers are all at or below the checkpoint's. Records at or
//! below the checkpoint's number are already in the redb file and are
//! skipped.
//!
//! The file is grown in zero-filled steps and written in place afterwards,
//! so a record's `fdatasync` does not have to commit a change of the
//! file's size to the file system journal too.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dynamo_core::store::{BatchOp, StoreError, Table};

use crate::error;

/// Name of the log file inside the store's directory.
pub const WAL_FILE_NAME: &str = "dynamo.wal";

/// Bytes of a record's header.
const HEADER: usize = 20;

/// Bytes the file grows by at a time, zero-filled (or less, at capacity).
const GROW_STEP: u64 = 1024 * 1024;

const PUT: u8 = 0;
const DELETE: u8 = 1;

/// One replayed record: its sequence number and operations.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) ops: Vec<BatchOp>,
}

/// The bytes a batch's record takes.
pub(crate) fn record_len(ops: &[BatchOp]) -> usize {
    HEADER
        + ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value, .. } => 2 + 4 + key.len() + 4 + value.len(),
                BatchOp::Delete { key, .. } => 2 + 4 + key.len(),
            })
            .sum::<usize>()
}

/// Encodes the record of `ops` numbered `seq` into `buf` (cleared first).
/// Returns `None` when a key or value is longer than a `u32` can say, or
/// the payload is: such a batch cannot be logged.
pub(crate) fn encode(seq: u64, ops: &[BatchOp], buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    buf.reserve(record_len(ops));
    buf.extend_from_slice(&[0; HEADER]);
    for op in ops {
        let (tag, table, key) = match op {
            BatchOp::Put { table, key, .. } => (PUT, table, key),
            BatchOp::Delete { table, key } => (DELETE, table, key),
        };
        buf.push(tag);
        buf.push(table.index() as u8);
        buf.extend_from_slice(&u32::try_from(key.len()).ok()?.to_le_bytes());
        buf.extend_from_slice(key);
        if let BatchOp::Put { value, .. } = op {
            buf.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
            buf.extend_from_slice(value);
        }
    }
    let payload_len = u32::try_from(buf.len() - HEADER).ok()?;
    let check = checksum(seq, &buf[HEADER..]);
    buf[0..4].copy_from_slice(&payload_len.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..20].copy_from_slice(&check.to_le_bytes());
    Some(())
}

/// A record's checksum: xxh3-64 of its sequence number's 8 bytes, then
/// its payload.
pub(crate) fn checksum(seq: u64, payload: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.digest()
}

/// Reads the chain of records at the start of `bytes` (a whole log file)
/// and returns those numbered above `checkpoint`, in order, with the
/// highest sequence number seen in the chain (0 for none).
///
/// # Errors
/// [`StoreError::Corrupt`] naming `path` when a record checks out but its
/// payload does not decode: written by something else, or damaged in a way
/// the checksum did not catch.
pub(crate) fn replay(path: &Path, bytes: &Bytes, checkpoint: u64) -> Result<(Vec<Record>, u64), StoreError> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut last: Option<u64> = None;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
        let check = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
        let start = pos + HEADER;
        let Some(payload) = start.checked_add(len).and_then(|end| bytes.get(start..end)) else { break };
        if len == 0 || checksum(seq, payload) != check || last.is_some_and(|l| l.checked_add(1) != Some(seq))
        {
            break;
        }
        if seq > checkpoint {
            let ops = decode(&bytes.slice(start..start + len)).ok_or_else(|| {
                error::corrupt(path, format!("replay: record {seq} at offset {pos} does not decode"))
            })?;
            records.push(Record { seq, ops });
        }
        last = Some(seq);
        pos = start + len;
    }
    Ok((records, last.unwrap_or(0)))
}

fn decode(payload: &Bytes) -> Option<Vec<BatchOp>> {
    let mut ops = Vec::new();
    let mut pos = 0usize;
    let take = |n: usize, pos: &mut usize| -> Option<Bytes> {
        let end = pos.checked_add(n)?;
        let out = (end <= payload.len()).then(|| payload.slice(*pos..end))?;
        *pos = end;
        Some(out)
    };
    while pos < payload.len() {
        let head = take(2, &mut pos)?;
        let table = *Table::ALL.get(usize::from(head[1]))?;
        let key_len = u32::from_le_bytes(take(4, &mut pos)?[..].try_into().ok()?) as usize;
        let key = take(key_len, &mut pos)?;
        match head[0] {
            PUT => {
                let value_len = u32::from_le_bytes(take(4, &mut pos)?[..].try_into().ok()?) as usize;
                let value = take(value_len, &mut pos)?;
                ops.push(BatchOp::Put { table, key, value });
            }
            DELETE => ops.push(BatchOp::Delete { table, key }),
            _ => return None,
        }
    }
    Some(ops)
}

/// The open log: where the next record goes and what it is numbered.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Offset of the next record.
    pos: u64,
    /// The file's length: bytes zero-filled or written so far.
    len: u64,
    /// Bytes after which the log is checkpointed and started over.
    capacity: u64,
    /// Number of the next record.
    next_seq: u64,
    /// Records appended since the last checkpoint.
    pending: u64,
    /// The record being written, kept to reuse its allocation.
    buf: Vec<u8>,
    /// Why the log is in an unknown state, after a failed append could not
    /// be taken back: every later write is refused until the store is
    /// reopened.
    poisoned: Option<String>,
}

impl Wal {
    /// Opens (creating) the log at `path`, to write from offset 0 with the
    /// record numbered `next_seq` next.
    pub(crate) fn open(path: PathBuf, capacity: u64, next_seq: u64) -> Result<Wal, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| error::io(&path, "open the write-ahead log", &e))?;
        let len = file.metadata().map_err(|e| error::io(&path, "open the write-ahead log", &e))?.len();
        // The file's name must survive a power loss as well as its records.
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| error::io(dir, "open: sync the store directory", &e))?;
        }
        Ok(Wal { file, path, pos: 0, len, capacity, next_seq, pending: 0, buf: Vec::new(), poisoned: None })
    }

    /// Whether a checkpoint has work: records appended since the last one,
    /// or a poisoned log to make usable again.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending > 0 || self.poisoned.is_some()
    }

    /// Records appended since the last checkpoint.
    pub(crate) fn pending_records(&self) -> u64 {
        self.pending
    }

    /// Refuses when an earlier failure left the log in an unknown state.
    pub(crate) fn check_usable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(error::backend(format!(
                "write: the write-ahead log {} is in an unknown state after {why}; reopen the store",
                self.path.display()
            ))),
        }
    }

    /// Encodes `ops` as the next record. Returns whether it fits in the log
    /// at all; when it does not, the caller commits the batch durably
    /// without the log.
    pub(crate) fn prepare(&mut self, ops: &[BatchOp]) -> bool {
        encode(self.next_seq, ops, &mut self.buf).is_some() && self.buf.len() as u64 <= self.capacity
    }

    /// Whether the prepared record fits after the records already logged.
    pub(crate) fn prepared_fits(&self) -> bool {
        self.pos + self.buf.len() as u64 <= self.capacity
    }

    /// Writes the prepared record at the current offset, then, when `sync`,
    /// `fdatasync`s it. Does not advance: [`Wal::advance`] does once the
    /// batch is in redb, and [`Wal::take_back`] undoes the record if it is
    /// not.
    ///
    /// # Errors
    /// [`StoreError::Full`] or [`StoreError::Backend`] when the file cannot
    /// grow, be written or be synced; the record is taken back then.
    pub(crate) fn append(&mut self, sync: bool) -> Result<(), StoreError> {
        let end = self.pos + self.buf.len() as u64;
        if end > self.len {
            self.grow(end)?;
        }
        let written = self.file.write_all_at(&self.buf, self.pos).and_then(|()| {
            if sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let err = error::io(&self.path, "write: append to the write-ahead log", &e);
            self.take_back(&err);
            return Err(err);
        }
        Ok(())
    }

    /// Zero-fills the file up to at least `end`, in [`GROW_STEP`]s, and
    /// makes the new length durable.
    fn grow(&mut self, end: u64) -> Result<(), StoreError> {
        let target = end.max(self.len + GROW_STEP).min(self.capacity.max(end));
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = self.len;
        let result = (|| {
            while at < target {
                let n = (target - at).min(ZEROS.len() as u64) as usize;
                self.file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            self.file.sync_all()
        })();
        match result {
            Ok(()) => {
                self.len = target;
                Ok(())
            }
            Err(e) => {
                // Nothing of a record was written; the old length is all
                // the log needs.
                let _ = self.file.set_len(self.len);
                Err(error::io(&self.path, "write: grow the write-ahead log", &e))
            }
        }
    }

    /// The prepared record is in redb: the next one goes after it.
    pub(crate) fn advance(&mut self) {
        self.pos += self.buf.len() as u64;
        self.next_seq += 1;
        self.pending += 1;
    }

    /// Undoes the prepared record, which may be on disk although its batch
    /// was refused: zeroes its header and syncs, so replay stops before it.
    /// When even that fails, the log is poisoned.
    pub(crate) fn take_back(&mut self, cause: &StoreError) {
        let undone = self.file.write_all_at(&[0; HEADER], self.pos).and_then(|()| self.file.sync_data());
        if let Err(e) = undone {
            tracing::error!(
                path = %self.path.display(), error = %e, cause = %cause,
                "cannot take back a refused record of the write-ahead log; refusing writes until reopened"
            );
            self.poisoned =
                Some(format!("a failed write ({cause}) whose record could not be taken back ({e})"));
        }
    }

    /// The sequence number a checkpoint made now covers: every record
    /// appended, and also the refused one that could not be taken back
    /// when the log is poisoned, so that replay skips it.
    pub(crate) fn covered_seq(&self) -> u64 {
        if self.poisoned.is_some() {
            self.next_seq
        } else {
            self.next_seq - 1
        }
    }

    /// Marks the log as in an unknown state, as a failed take-back does.
    #[cfg(test)]
    pub(crate) fn poison(&mut self, why: &str) {
        self.poisoned = Some(why.to_owned());
    }

    /// A checkpoint covering [`Wal::covered_seq`] was committed: the log is
    /// written from its start again, and a poisoned log is usable again
    /// (its refused record's number is spent).
    pub(crate) fn checkpointed(&mut self) {
        if self.poisoned.take().is_some() {
            self.next_seq += 1;
        }
        self.pos = 0;
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> BatchOp {
        BatchOp::Put {
            table: Table::Data,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        }
    }

    fn log_of(records: &[(u64, Vec<BatchOp>)]) -> Vec<u8> {
        let mut file = Vec::new();
        let mut buf = Vec::new();
        for (seq, ops) in records {
            encode(*seq, ops, &mut buf).unwrap();
            assert_eq!(buf.len(), record_len(ops));
            file.extend_from_slice(&buf);
        }
        file
    }

    fn seqs(file: Vec<u8>, checkpoint: u64) -> (Vec<u64>, u64) {
        let (records, last) = replay(Path::new("w"), &Bytes::from(file), checkpoint).unwrap();
        (records.iter().map(|r| r.seq).collect(), last)
    }

    #[test]
    fn records_round_trip_every_op_and_table() {
        let ops = vec![
            put(b"k", b"v"),
            BatchOp::Delete { table: Table::Hints, key: Bytes::from_static(b"h") },
            BatchOp::Put { table: Table::Meta, key: Bytes::new(), value: Bytes::new() },
        ];
        let (records, last) = replay(Path::new("w"), &Bytes::from(log_of(&[(7, ops.clone())])), 0).unwrap();
        assert_eq!(last, 7);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].ops, ops);
    }

    #[test]
    fn replay_skips_checkpointed_records_and_stops_at_a_gap_in_numbers() {
        let file =
            log_of(&[(4, vec![put(b"a", b"1")]), (5, vec![put(b"b", b"2")]), (6, vec![put(b"c", b"3")])]);
        assert_eq!(seqs(file.clone(), 0), (vec![4, 5, 6], 6));
        assert_eq!(seqs(file.clone(), 5), (vec![6], 6));
        assert_eq!(seqs(file, 6), (vec![], 6));
        // A new pass (9, 10) over records of an old one (5): the old one ends the chain.
        let mut file = log_of(&[(9, vec![put(b"x", b"1")]), (10, vec![put(b"y", b"2")])]);
        let old = log_of(&[(5, vec![put(b"b", b"2")])]);
        file.extend_from_slice(&old);
        assert_eq!(seqs(file, 8), (vec![9, 10], 10));
    }

    #[test]
    fn replay_stops_at_a_torn_or_damaged_record_and_at_zeroes() {
        let file = log_of(&[(1, vec![put(b"a", b"1")]), (2, vec![put(b"b", b"22222")])]);
        for cut in 0..file.len() {
            let (got, _) = seqs(file[..cut].to_vec(), 0);
            let whole = usize::from(cut >= record_len(&[put(b"a", b"1")]));
            assert_eq!(got.len(), whole, "cut at {cut}");
        }
        for flip in 0..file.len() {
            let mut damaged = file.clone();
            damaged[flip] ^= 0x40;
            let (got, _) = seqs(damaged, 0);
            assert!(got.len() < 2, "a flipped byte at {flip} went unnoticed");
        }
        let mut zeroed = file.clone();
        zeroed.extend_from_slice(&[0; 100]);
        assert_eq!(seqs(zeroed, 0).0, vec![1, 2]);
        assert_eq!(seqs(vec![0; 100], 0), (vec![], 0));
    }

    #[test]
    fn a_record_that_checks_out_but_does_not_decode_is_corrupt() {
        let mut buf = Vec::new();
        encode(1, &[put(b"k", b"v")], &mut buf).unwrap();
        // A table index no store has, with a checksum to match.
        buf[HEADER + 1] = 9;
        let check = checksum(1, &buf[HEADER..]);
        buf[12..20].copy_from_slice(&check.to_le_bytes());
        let err = replay(Path::new("the-wal"), &Bytes::from(buf), 0).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { path, .. } if path == "the-wal"), "{err:?}");
    }

    #[test]
    fn appends_grow_the_file_in_zeroed_steps_and_take_back_zeroes_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILE_NAME);
        let mut wal = Wal::open(path.clone(), 4 * GROW_STEP, 1).unwrap();
        assert!(wal.prepare(&[put(b"a", b"1")]));
        wal.append(true).unwrap();
        wal.advance();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW_STEP);
        assert!(wal.prepare(&[put(b"b", b"2")]));
        wal.append(true).unwrap();
        let refused = error::backend("refused".to_owned());
        wal.take_back(&refused);
        wal.check_usable().unwrap();
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        let (records, last) = replay(&path, &bytes, 0).unwrap();
        assert_eq!((records.len(), last), (1, 1));
        assert_eq!(wal.covered_seq(), 1);
        // A record larger than the whole log cannot be logged.
        assert!(!wal.prepare(&[put(b"big", &vec![0; 4 * GROW_STEP as usize])]));
    }
}

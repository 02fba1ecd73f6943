//! A disk spool: what the InfluxDB sink has accepted but the server has not yet acknowledged.
//!
//! Layout in `<state_dir>/spool/`:
//! - `<seq>.seg`: append-only segment files, `seq` a zero-padded, ever-increasing number.
//!   Each record is `magic | len: u32 LE | crc32(len, payload): u32 LE | payload`, one
//!   line-protocol line per record, so that counts of points and records are the same thing.
//!   The 4-byte magic starts with 0xFF, a byte that never occurs in UTF-8 text, so it never
//!   occurs inside a payload: after a damaged record the reader finds the next record by
//!   searching for the magic and checking length and checksum there.
//! - `cursor`: the committed read position (`seq offset index`), replaced atomically
//!   (write a temporary file, then rename; both synced unless `fsync` is `never`). Everything
//!   before it has been acknowledged.
//!
//! Segments written before the magic existed (`len | crc32(payload) | payload`, no magic) are
//! still read: a segment without any magic in it is read in that format, and there a damaged
//! record is skipped by trying each later offset for a record whose length, final newline and
//! checksum agree.
//!
//! Damage: a record torn by a crash mid-write at the end of a segment is cut off when the
//! spool is opened. A damaged record in the middle of a segment (a flipped bit on the disk) is
//! skipped and counted, and every valid record after it is kept. A missing, empty, garbled or
//! impossible cursor is rebuilt from the segments (replaying from the oldest one, so points may
//! be sent twice but none are lost) and counted. After a restart the reader starts at the
//! committed cursor, so the only records sent twice are those of the batch that was in flight
//! when the process died.
//!
//! Disk use: acknowledged segments are deleted, and the active segment is closed once
//! [`ROLL_ACKED_BYTES`] of it are acknowledged (at once while appends fail), to be deleted
//! when the rest of it is acknowledged, so acknowledged data never fills the disk. The total size is bounded: after an append passes
//! `max_bytes`, the oldest segments are deleted and every unacknowledged record in them is
//! counted as dropped. A failed append deletes nothing.
//!
//! The parts: `record.rs` the record framing and the segment check (pure, over bytes),
//! `recover.rs` opening the spool (checking segments, cutting torn tails, rebuilding the
//! cursor), this file the running spool (append, read, commit, size bound, cursor file).
//! This file is over 700 lines only because of its unit tests (about 390 lines at the end),
//! which drive the whole spool through its public methods on a temporary folder and so
//! belong beside it; the code itself is about 630 lines.

mod record;
mod recover;

use record::{encode, parse_at, records_in, resync, Format, MAX_RECORD};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes a record takes beyond its payload: magic, length, checksum.
pub const RECORD_OVERHEAD: u64 = 12;
/// A fully acknowledged active segment is closed (and so deleted) once it holds this much.
/// Smaller would mean a file created and deleted for every batch.
pub const ROLL_ACKED_BYTES: u64 = 64 << 10;

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every append call (one `fdatasync` per submitted batch of points).
    Always,
    /// At most once per interval; a crash of the machine (not the process) can lose that long.
    Interval(Duration),
    /// Never explicitly: the OS writes back when it likes (about 30 s on Linux by default).
    Never,
}

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Configuration of a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Bound on the total size of all segments, bytes.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl SpoolOptions {
    /// Segments of a sixteenth of the bound, between 64 KiB and 4 MiB: small next to the
    /// bound, so that dropping the oldest segment throws away a small share of the backlog,
    /// and small next to the disk, so that an acknowledged segment frees its space soon
    /// (the reader also holds one segment in memory).
    pub fn new(max_bytes: u64, fsync: FsyncPolicy) -> Self {
        SpoolOptions {
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(64 << 10, 4 << 20),
            fsync,
        }
    }
}

/// A position in the spool: segment, byte offset in it, and number of valid records before
/// it in that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
    pub index: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Bytes up to the end of the last valid record.
    bytes: u64,
    /// Valid records.
    records: u64,
    format: Format,
    /// Damaged stretches found when the spool was opened (start, end): the reader jumps
    /// over them without counting them again.
    skips: Vec<(u64, u64)>,
}

/// Counters a spool keeps for the sink's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended and not yet acknowledged.
    pub backlog: u64,
    /// Bytes on disk in all segments.
    pub bytes: u64,
    /// Unacknowledged records deleted because the size bound was reached.
    pub dropped: u64,
    /// Records lost to corruption (torn tail or bad checksum), as far as they can be counted.
    pub corrupt: u64,
    /// Times the cursor file was unusable (empty, garbled, pointing past the data) and was
    /// rebuilt from the segments.
    pub cursor_resets: u64,
}

/// A batch read from the spool: newline-terminated lines and where it ends.
#[derive(Debug, Default)]
pub struct Batch {
    pub body: String,
    pub count: u64,
    pub end: Option<Position>,
}

/// The spool. One writer and one reader, both through `&mut self` (the sink wraps it in a mutex).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    segments: VecDeque<Segment>,
    /// The active segment, open for appending; it is always `segments.back()`.
    writer: File,
    /// The committed read position.
    cursor: Position,
    /// The read side's segment, held in memory from its start (segments are small), reused
    /// between batches and extended as the active segment grows.
    reader: Option<(u64, Vec<u8>)>,
    last_sync: Instant,
    dirty: bool,
    /// The last append failed (a full disk, say): acknowledged data is freed at once.
    append_failing: bool,
    /// The last fsync failed; logged once per failure episode.
    sync_failing: bool,
    dropped: u64,
    corrupt: u64,
    cursor_resets: u64,
    /// Test hook: the next append writes only this many bytes and then fails, as a full disk
    /// would.
    #[cfg(test)]
    fail_after: Option<usize>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

impl Spool {
    /// Appends one record per line. Each line must be one complete line-protocol line
    /// (newline-terminated). Applies the fsync policy, then the size bound. On an error
    /// nothing of the call is in the spool and nothing was deleted.
    pub fn append<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(4096);
        let mut records = 0u64;
        for line in lines {
            let payload = line.as_bytes();
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .unwrap_or(0);
            if len == 0 {
                tracing::warn!(
                    bytes = payload.len(),
                    "line too long for the spool (or empty); not spooled"
                );
                continue;
            }
            encode(&mut buf, payload, len);
            records += 1;
        }
        if records == 0 {
            return Ok(());
        }
        let need = buf.len() as u64;
        if self.active().bytes > 0 && self.active().bytes + need > self.opts.segment_bytes {
            if let Err(e) = self.roll() {
                self.append_failing = true;
                return Err(e);
            }
        }
        let path = seg_path(&self.dir, self.active().seq);
        if let Err(e) = self.write_active(&buf) {
            self.append_failing = true;
            self.undo_torn_append(&path);
            // Whatever is acknowledged goes now, so that the next try may find room.
            self.release_acknowledged(1);
            return Err(io_err(&path, "appending")(e));
        }
        self.append_failing = false;
        let seg = self.active_mut();
        seg.bytes += need;
        seg.records += records;
        self.dirty = true;
        // The records are in the file now, so a failed fsync does not fail the append (the
        // caller would keep them elsewhere too and send them twice); it is logged instead.
        let synced = match self.opts.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        };
        self.note_sync(synced);
        // Only now, with the new records safely written, is the oldest data given up for the
        // bound; a failed append must not cost the backlog anything.
        self.enforce_bound()?;
        Ok(())
    }

    fn note_sync(&mut self, r: Result<(), SpoolError>) {
        match r {
            Ok(()) => self.sync_failing = false,
            Err(e) => {
                if !self.sync_failing {
                    tracing::error!(error = %e, "cannot sync the spool to disk; spooled points survive a crash of the daemon but not a power loss until this clears");
                }
                self.sync_failing = true;
            }
        }
    }

    /// Forces appended data to disk if any is pending (called by the interval policy and on
    /// shutdown).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty && self.opts.fsync != FsyncPolicy::Never {
            let path = seg_path(&self.dir, self.active().seq);
            self.writer.sync_data().map_err(io_err(&path, "syncing"))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs when the interval policy says it is time; cheap otherwise.
    pub fn sync_if_due(&mut self) -> Result<(), SpoolError> {
        match self.opts.fsync {
            FsyncPolicy::Interval(d) if self.dirty && self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    /// Reads up to `max` records from the committed cursor on. Reading does not move the
    /// cursor: call [`Spool::commit`] with `batch.end` once the batch is acknowledged.
    pub fn read_batch(&mut self, max: usize) -> Result<Batch, SpoolError> {
        let mut batch = Batch::default();
        let mut pos = self.cursor;
        let mut corrupt = 0u64;
        while (batch.count as usize) < max {
            let Some(seg) = self.segments.iter().find(|s| s.seq == pos.seq) else {
                break;
            };
            let (seg_bytes, seg_records, format) = (seg.bytes, seg.records, seg.format);
            if pos.offset >= seg_bytes {
                // End of this segment: move on if a later one exists.
                match self.segments.iter().find(|s| s.seq > pos.seq) {
                    Some(n) => {
                        pos = Position {
                            seq: n.seq,
                            offset: 0,
                            index: 0,
                        };
                        batch.end = Some(pos);
                        continue;
                    }
                    None => break,
                }
            }
            if let Some(&(_, end)) = seg.skips.iter().find(|s| s.0 == pos.offset) {
                // Damage found and counted at open.
                pos.offset = end;
                batch.end = Some(pos);
                continue;
            }
            let skip_at: Vec<u64> = seg.skips.iter().map(|s| s.0).collect();
            let path = seg_path(&self.dir, pos.seq);
            let buf = self.load(pos.seq, seg_bytes)?;
            let buf = &buf[..seg_bytes as usize];
            let mut off = pos.offset as usize;
            while (batch.count as usize) < max && off < buf.len() {
                if skip_at.contains(&(off as u64)) {
                    break;
                }
                match parse_at(buf, off, format) {
                    Some((start, end)) => {
                        off = end;
                        pos.index += 1;
                        match std::str::from_utf8(&buf[start..end]) {
                            Ok(s) => {
                                batch.body.push_str(s);
                                batch.count += 1;
                            }
                            Err(_) => {
                                tracing::warn!(file = %path.display(), offset = start,
                                    "spool record is not UTF-8 despite a good checksum; skipped");
                                corrupt += 1;
                            }
                        }
                    }
                    None => {
                        // Damage that appeared after the check at open: skip to the next
                        // valid record.
                        let next = resync(buf, off + 1, format).unwrap_or(buf.len());
                        let lost = records_in(&buf[off..next], format);
                        tracing::warn!(file = %path.display(), offset = off, skipped_bytes = next - off,
                            lost_records = lost, "damaged spool record; skipping to the next valid one");
                        corrupt += lost;
                        pos.index = (pos.index + lost).min(seg_records);
                        off = next;
                    }
                }
                pos.offset = off as u64;
                batch.end = Some(pos);
            }
        }
        self.corrupt += corrupt;
        Ok(batch)
    }

    /// The first `len` bytes of segment `seq`, from the reader's copy, read from the file as
    /// far as it does not reach yet.
    fn load(&mut self, seq: u64, len: u64) -> Result<&Vec<u8>, SpoolError> {
        if self.reader.as_ref().map(|r| r.0) != Some(seq) {
            self.reader = Some((seq, Vec::new()));
        }
        let dir = self.dir.clone();
        let (_, buf) = self
            .reader
            .as_mut()
            .expect("spool invariant: reader was just set");
        let have = buf.len() as u64;
        if have < len {
            let path = seg_path(&dir, seq);
            let mut f = File::open(&path).map_err(io_err(&path, "opening for reading"))?;
            f.seek(SeekFrom::Start(have))
                .map_err(io_err(&path, "seeking"))?;
            let mut more = vec![0u8; (len - have) as usize];
            f.read_exact(&mut more).map_err(io_err(&path, "reading"))?;
            buf.extend_from_slice(&more);
        }
        Ok(buf)
    }

    /// Marks everything before `end` as acknowledged: deletes segments that are fully
    /// acknowledged and stores the cursor durably. The active segment is closed once its
    /// acknowledged part is large enough (at once while appends fail), so that it can go too.
    /// Segments go before the cursor is stored: on a full disk the cursor can only be
    /// written once they are gone, and a crash in between only means points are sent twice
    /// (a cursor whose segment is missing starts at the next one).
    pub fn commit(&mut self, end: Position) -> Result<(), SpoolError> {
        if end <= self.cursor {
            return Ok(());
        }
        self.cursor = end;
        let threshold = if self.append_failing {
            1
        } else {
            ROLL_ACKED_BYTES
        };
        self.release_acknowledged(threshold);
        self.write_cursor()
    }

    /// Closes the active segment once `threshold` bytes of it are acknowledged, and deletes
    /// every segment the cursor has passed. Also when the tail of the active segment is still
    /// unacknowledged (points arrive all the time): new points go to a new segment, and the
    /// old one is deleted once the cursor passes its end.
    fn release_acknowledged(&mut self, threshold: u64) {
        let a = self.active();
        if self.cursor.seq == a.seq && self.cursor.offset >= threshold.max(1) {
            let at_end = self.cursor.offset >= a.bytes;
            match self.roll() {
                Ok(()) if at_end => {
                    self.cursor = Position {
                        seq: self.active().seq,
                        offset: 0,
                        index: 0,
                    };
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not close the acknowledged spool segment; it stays until the next try");
                }
            }
        }
        let active = self.active().seq;
        while self
            .segments
            .front()
            .is_some_and(|s| s.seq < self.cursor.seq && s.seq != active)
        {
            if let Some(s) = self.segments.pop_front() {
                if self.reader.as_ref().is_some_and(|(q, _)| *q == s.seq) {
                    self.reader = None;
                }
                let path = seg_path(&self.dir, s.seq);
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "could not delete an acknowledged spool segment");
                }
            }
        }
    }

    pub fn stats(&self) -> SpoolStats {
        let mut backlog = 0;
        let mut bytes = 0;
        for s in &self.segments {
            bytes += s.bytes;
            if s.seq > self.cursor.seq {
                backlog += s.records;
            } else if s.seq == self.cursor.seq {
                backlog += s.records.saturating_sub(self.cursor.index);
            }
        }
        SpoolStats {
            backlog,
            bytes,
            dropped: self.dropped,
            corrupt: self.corrupt,
            cursor_resets: self.cursor_resets,
        }
    }

    /// Checks that the spool's disk takes a write again, with a small file of its own (removed
    /// at once, and at open if a crash left it), so that a recovered disk is noticed while
    /// there is nothing to append.
    pub fn probe(&self) -> Result<(), SpoolError> {
        let path = self.dir.join("probe.tmp");
        let r = File::create(&path).and_then(|mut f| f.write_all(&[0u8; 4096]));
        let _ = fs::remove_file(&path);
        r.map_err(io_err(&path, "writing a probe file"))
    }

    /// Bytes that can still be appended before the size bound would delete old segments.
    /// A record takes [`RECORD_OVERHEAD`] bytes more than its line.
    pub fn room(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        self.opts.max_bytes.saturating_sub(total)
    }

    /// The committed cursor.
    pub fn cursor(&self) -> Position {
        self.cursor
    }

    fn active(&self) -> &Segment {
        self.segments
            .back()
            .expect("spool invariant: the active segment is always present")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("spool invariant: the active segment is always present")
    }

    fn write_active(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_after.take() {
            self.writer.write_all(&buf[..n.min(buf.len())])?;
            return Err(io::Error::other("test hook: disk full"));
        }
        self.writer.write_all(buf)
    }

    /// After a failed append (a full disk, say) part of the batch may be in the file while the
    /// tracked length did not grow. Later appends would land after those torn bytes, and the
    /// reader would have to skip them as damage. So cut the file back to its known length (the
    /// writer appends, so the next write lands there); if that fails, start a fresh segment,
    /// whose tracked length the reader stops at, leaving the torn bytes unread.
    fn undo_torn_append(&mut self, path: &Path) {
        let known = self.active().bytes;
        match self.writer.set_len(known) {
            Ok(()) => {
                tracing::debug!(file = %path.display(), bytes = known, "append failed; cut the segment back to its last whole record");
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "append failed and the segment could not be cut back; starting a new segment");
                if let Err(e) = self.roll() {
                    tracing::error!(error = %e, "could not start a new spool segment after a failed append");
                }
            }
        }
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.opts.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        let next = self.active().seq + 1;
        self.writer = create_segment(&self.dir, next)?;
        self.segments.push_back(Segment {
            seq: next,
            bytes: 0,
            records: 0,
            format: Format::Marked,
            skips: Vec::new(),
        });
        Ok(())
    }

    /// Deletes the oldest segments until the total is within the bound again. The active
    /// segment is never deleted, so a bound smaller than one segment still accepts data.
    fn enforce_bound(&mut self) -> Result<(), SpoolError> {
        loop {
            let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
            if total <= self.opts.max_bytes || self.segments.len() < 2 {
                return Ok(());
            }
            let Some(old) = self.segments.pop_front() else {
                return Ok(());
            };
            let lost = if old.seq > self.cursor.seq {
                old.records
            } else if old.seq == self.cursor.seq {
                old.records.saturating_sub(self.cursor.index)
            } else {
                0
            };
            self.dropped += lost;
            tracing::warn!(
                segment = old.seq,
                dropped_points = lost,
                max_bytes = self.opts.max_bytes,
                "spool size bound reached; deleting the oldest segment"
            );
            if self.reader.as_ref().is_some_and(|(q, _)| *q == old.seq) {
                self.reader = None;
            }
            let path = seg_path(&self.dir, old.seq);
            fs::remove_file(&path).map_err(io_err(&path, "deleting the oldest segment"))?;
            if self.cursor.seq <= old.seq {
                let next = self.segments.front().map(|s| s.seq).unwrap_or(old.seq + 1);
                self.cursor = Position {
                    seq: next,
                    offset: 0,
                    index: 0,
                };
                self.write_cursor()?;
            }
        }
    }

    /// Replaces the cursor file atomically. Unless the policy is `never`, the file is synced
    /// before the rename and the folder after it, so the new name survives a power loss.
    fn write_cursor(&self) -> Result<(), SpoolError> {
        let path = self.dir.join("cursor");
        let tmp = self.dir.join("cursor.tmp");
        let text = format!(
            "{} {} {}\n",
            self.cursor.seq, self.cursor.offset, self.cursor.index
        );
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "creating"))?;
        f.write_all(text.as_bytes())
            .map_err(io_err(&tmp, "writing"))?;
        if self.opts.fsync != FsyncPolicy::Never {
            f.sync_data().map_err(io_err(&tmp, "syncing"))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path, "replacing"))?;
        if self.opts.fsync != FsyncPolicy::Never {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(
                    &self.dir,
                    "syncing the folder after replacing the cursor",
                ))?;
        }
        Ok(())
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<File, SpoolError> {
    let path = seg_path(dir, seq);
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path, "creating a segment"))?;
    // Make the new file's name durable too, or a machine crash could lose the whole segment.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max: u64) -> SpoolOptions {
        SpoolOptions {
            max_bytes: max,
            segment_bytes: 1024,
            fsync: FsyncPolicy::Never,
        }
    }

    fn lines(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("m v={i}i {i}\n")).collect()
    }

    fn drain(s: &mut Spool, batch: usize) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let b = s.read_batch(batch).expect("read");
            if let Some(end) = b.end {
                s.commit(end).expect("commit");
            }
            if b.count == 0 && b.end.is_none() {
                return out;
            }
            out.extend(b.body.lines().map(|l| format!("{l}\n")));
        }
    }

    #[test]
    fn appended_lines_replay_in_order_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
        let all = lines(0..500);
        for chunk in all.chunks(7) {
            s.append(chunk.iter().map(String::as_str)).expect("append");
        }
        assert!(s.segments.len() > 5, "segments roll over");
        assert_eq!(s.stats().backlog, 500);
        assert_eq!(drain(&mut s, 64), all);
        assert_eq!(s.stats().backlog, 0);
        assert_eq!(s.segments.len(), 1, "acknowledged segments are deleted");
    }

    #[test]
    fn restart_resumes_after_the_committed_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(0..100);
        {
            let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
            s.append(all.iter().map(String::as_str)).expect("append");
            let b = s.read_batch(30).expect("read");
            s.commit(b.end.expect("end")).expect("commit");
            // A second batch is read (in flight) but never acknowledged: the process dies.
            let inflight = s.read_batch(30).expect("read");
            assert_eq!(inflight.count, 30);
        }
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("reopen");
        assert_eq!(s.stats().backlog, 70);
        s.append(["late v=1i 1\n"]).expect("append");
        let mut want = all[30..].to_vec();
        want.push("late v=1i 1\n".into());
        assert_eq!(drain(&mut s, 16), want);
    }

    #[test]
    fn torn_tail_is_cut_off_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(0..10);
        let seq;
        {
            let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
            s.append(all.iter().map(String::as_str)).expect("append");
            seq = s.active().seq;
        }
        let path = seg_path(dir.path(), seq);
        // A crash mid-write: a header that promises more payload than was written.
        let mut f = OpenOptions::new().append(true).open(&path).expect("seg");
        f.write_all(&100u32.to_le_bytes()).expect("w");
        f.write_all(&[1, 2, 3, 4, b'm', b' ']).expect("w");
        drop(f);
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("reopen");
        assert_eq!(s.stats().corrupt, 1);
        assert_eq!(s.stats().backlog, 10);
        assert_eq!(drain(&mut s, 4), all);
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(0..10);
        let seq;
        {
            let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
            s.append(all.iter().map(String::as_str)).expect("append");
            seq = s.active().seq;
        }
        let path = seg_path(dir.path(), seq);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("reopen");
        assert_eq!(drain(&mut s, 100), all[..9].to_vec());
        assert_eq!(s.stats().corrupt, 1);
    }

    #[test]
    fn bound_drops_oldest_and_counts_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(4096)).expect("open");
        let all = lines(0..1000);
        for l in &all {
            s.append([l.as_str()]).expect("append");
        }
        let st = s.stats();
        assert!(st.bytes <= 4096, "bound holds: {st:?}");
        assert!(st.dropped > 0);
        let left = drain(&mut s, 1000);
        assert_eq!(
            st.dropped + left.len() as u64,
            1000,
            "every point is either kept or counted"
        );
        // What is kept is the newest, in order.
        assert_eq!(left, all[all.len() - left.len()..].to_vec());
    }

    #[test]
    fn failed_partial_append_leaves_the_spool_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
        let all = lines(0..20);
        s.append(all[..5].iter().map(String::as_str))
            .expect("append");
        // The disk fills mid-batch: 13 bytes of the next batch reach the file, then an error.
        s.fail_after = Some(13);
        s.append(["lost v=1i 1\n", "lost v=2i 2\n"])
            .expect_err("the hook fails the append");
        s.append(all[5..].iter().map(String::as_str))
            .expect("append after the failure");
        assert_eq!(drain(&mut s, 4), all);
        assert_eq!(s.stats().corrupt, 0, "no good record counted corrupt");
        drop(s);
        // A restart finds no torn tail either.
        let s = Spool::open(dir.path(), opts(1 << 20)).expect("reopen");
        assert_eq!(s.stats().corrupt, 0);
    }

    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = fs::read_dir(dir)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                let len = e.metadata().expect("metadata").len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .filter(|(n, _)| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    }

    /// Flips one byte of the payload that contains `needle`.
    fn flip(path: &Path, needle: &str) {
        let mut bytes = fs::read(path).expect("read segment");
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{needle} not in {}", path.display()));
        bytes[at + 2] ^= 0x01;
        fs::write(path, &bytes).expect("write segment");
    }

    #[test]
    fn bad_cursor_is_rebuilt_from_the_segments_not_an_error() {
        let all = lines(0..40);
        for bad in [
            "",
            "garbage",
            "1 2",
            "\u{0}\u{0}\u{0}",
            "999 0 0",
            "1 999999 3",
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
                s.append(all.iter().map(String::as_str)).expect("append");
            }
            let seq = files(dir.path())[0]
                .0
                .trim_end_matches(".seg")
                .parse::<u64>()
                .expect("seq");
            let bad = if bad == "1 999999 3" {
                format!("{seq} 999999 3")
            } else {
                bad.to_string()
            };
            fs::write(dir.path().join("cursor"), &bad).expect("write");
            let mut s = Spool::open(dir.path(), opts(1 << 20))
                .unwrap_or_else(|e| panic!("cursor {bad:?} must not stop the spool: {e}"));
            assert_eq!(s.stats().cursor_resets, 1, "cursor {bad:?}");
            assert_eq!(drain(&mut s, 7), all, "cursor {bad:?}: everything replays");
        }
    }

    #[test]
    fn cursor_between_records_replays_from_the_record_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(0..10);
        let seq;
        {
            let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
            s.append(all.iter().map(String::as_str)).expect("append");
            seq = s.active().seq;
        }
        let rec = (12 + all[0].len()) as u64;
        // Three records acknowledged, the offset a few bytes into the fourth, a wrong index.
        fs::write(
            dir.path().join("cursor"),
            format!("{seq} {} 77", 3 * rec + 5),
        )
        .expect("w");
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("reopen");
        assert_eq!(s.stats().backlog, 7);
        assert_eq!(drain(&mut s, 4), all[3..].to_vec());
    }

    #[test]
    fn damaged_records_mid_segment_are_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(100..400);
        let o = SpoolOptions {
            max_bytes: 1 << 20,
            segment_bytes: 2 << 10,
            fsync: FsyncPolicy::Never,
        };
        {
            let mut s = Spool::open(dir.path(), o.clone()).expect("open");
            for chunk in all.chunks(10) {
                s.append(chunk.iter().map(String::as_str)).expect("append");
            }
        }
        let segs = files(dir.path());
        assert!(segs.len() >= 3, "{segs:?}");
        let holding = |needle: &str| {
            segs.iter()
                .position(|(n, _)| {
                    let b = fs::read(dir.path().join(n)).expect("read");
                    b.windows(needle.len()).any(|w| w == needle.as_bytes())
                })
                .expect("a segment holds the line")
        };
        let (a, b) = (holding("v=102i"), holding("v=250i"));
        assert_ne!(a, b, "damage in two segments");
        flip(&dir.path().join(&segs[a].0), "v=102i");
        flip(&dir.path().join(&segs[b].0), "v=250i");
        let mut s = Spool::open(dir.path(), o).expect("reopen");
        assert_eq!(s.stats().corrupt, 2);
        assert_eq!(s.stats().backlog, 298);
        let want: Vec<String> = all
            .iter()
            .filter(|l| !l.contains("v=102i") && !l.contains("v=250i"))
            .cloned()
            .collect();
        assert_eq!(drain(&mut s, 64), want);
        assert_eq!(s.stats().corrupt, 2, "counted once");
        drop(s);
        assert_eq!(files(dir.path()).len(), 1, "acknowledged segments deleted");
    }

    #[test]
    fn damage_after_open_is_skipped_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(0..50);
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
        let o = SpoolOptions {
            segment_bytes: 1 << 20,
            ..opts(1 << 20)
        };
        s.opts = o;
        s.append(all.iter().map(String::as_str)).expect("append");
        flip(&seg_path(dir.path(), s.active().seq), "v=20i");
        let want: Vec<String> = all
            .iter()
            .filter(|l| !l.contains("v=20i"))
            .cloned()
            .collect();
        assert_eq!(drain(&mut s, 8), want);
        assert_eq!(s.stats().corrupt, 1);
        assert_eq!(s.stats().backlog, 0);
    }

    #[test]
    fn legacy_segments_without_markers_are_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = lines(0..30);
        let mut bytes = Vec::new();
        for l in &all {
            bytes.extend_from_slice(&(l.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(l.as_bytes()).to_le_bytes());
            bytes.extend_from_slice(l.as_bytes());
        }
        fs::write(seg_path(dir.path(), 7), &bytes).expect("write");
        flip(&seg_path(dir.path(), 7), "v=11i");
        let mut s = Spool::open(dir.path(), opts(1 << 20)).expect("open");
        assert_eq!(s.stats().corrupt, 1);
        let want: Vec<String> = all
            .iter()
            .filter(|l| !l.contains("v=11i"))
            .cloned()
            .collect();
        assert_eq!(drain(&mut s, 8), want);
        s.append(["new v=1i 1\n"]).expect("append");
        assert_eq!(drain(&mut s, 8), ["new v=1i 1\n"]);
    }

    #[test]
    fn acknowledged_data_does_not_stay_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One large segment, as the old 64 MiB default: the active segment must still be
        // given up once everything in it is acknowledged.
        let o = SpoolOptions {
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Never,
        };
        let mut s = Spool::open(dir.path(), o).expect("open");
        let all = lines(0..5000);
        for chunk in all.chunks(100) {
            s.append(chunk.iter().map(String::as_str)).expect("append");
            drain(&mut s, 1000);
        }
        let on_disk: u64 = files(dir.path()).iter().map(|f| f.1).sum();
        assert!(
            on_disk < ROLL_ACKED_BYTES + 8192,
            "{on_disk} bytes left on disk"
        );
        assert_eq!(s.stats().backlog, 0);
    }

    #[test]
    fn acknowledged_data_is_freed_while_points_keep_arriving() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = SpoolOptions {
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Never,
        };
        let mut s = Spool::open(dir.path(), o).expect("open");
        let all = lines(0..20_000);
        let mut chunks = all.chunks(100);
        s.append(chunks.next().expect("chunk").iter().map(String::as_str))
            .expect("append");
        // Each batch is acknowledged after more points arrived: the cursor never reaches
        // the end of the active segment.
        for chunk in chunks {
            let b = s.read_batch(1000).expect("read");
            s.append(chunk.iter().map(String::as_str)).expect("append");
            s.commit(b.end.expect("end")).expect("commit");
            let on_disk: u64 = files(dir.path()).iter().map(|f| f.1).sum();
            assert!(
                on_disk < 2 * ROLL_ACKED_BYTES + 8192,
                "{on_disk} bytes on disk"
            );
        }
        assert_eq!(drain(&mut s, 1000).len(), 100);
    }

    #[test]
    fn failed_append_deletes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(4096)).expect("open");
        let all = lines(0..40);
        for l in &all {
            s.append([l.as_str()]).expect("append");
        }
        let before = s.stats();
        assert!(before.backlog > 0);
        s.fail_after = Some(0);
        let big = lines(1000..1200);
        s.append(big.iter().map(String::as_str))
            .expect_err("the hook fails the append");
        assert_eq!(s.stats(), before, "a failed append changes nothing");
    }
}

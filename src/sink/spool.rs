//! A disk spool: what the InfluxDB sink has accepted but the server has not yet acknowledged.
//!
//! Layout in `<state_dir>/spool/`:
//! - `<seq>.seg`: append-only segment files, `seq` a zero-padded, ever-increasing number.
//!   Each record is `len: u32 LE | crc32(payload): u32 LE | payload`, one line-protocol line
//!   per record, so that counts of points and records are the same thing.
//! - `cursor`: the committed read position (`seq offset index`), replaced atomically
//!   (write a temporary file, then rename). Everything before it has been acknowledged.
//!
//! Crash behaviour: a record torn by a crash mid-write fails its length or checksum check when
//! the spool is opened; the segment is cut back to the last good record and a warning names the
//! file and the bytes skipped. After a restart the reader starts at the committed cursor, so the
//! only records sent twice are those of the batch that was in flight when the process died.
//!
//! The total size is bounded: only when appending would pass `max_bytes` are the oldest
//! segments deleted, and every unacknowledged record in them is counted as dropped.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of record header: length and checksum.
const HEADER: u64 = 8;
/// The largest record accepted. A line-protocol line of a coolantd point is a few hundred
/// bytes; anything near this is a bug, and the limit keeps a corrupt length from making the
/// reader allocate gigabytes.
const MAX_RECORD: u32 = 1 << 20;

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
    #[error("spool cursor {path}: expected `<segment> <offset> <index>`, found {found:?}")]
    BadCursor { path: PathBuf, found: String },
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
    /// Segments of an eighth of the bound (between 64 KiB and 64 MiB), so that dropping the
    /// oldest segment when the bound is reached throws away a small share of the backlog.
    pub fn new(max_bytes: u64, fsync: FsyncPolicy) -> Self {
        SpoolOptions {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 64 << 20),
            fsync,
        }
    }
}

/// A position in the spool: segment, byte offset in it, and number of records before it in
/// that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
    pub index: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    records: u64,
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
    /// The read side's open segment, reused between batches.
    reader: Option<(u64, File)>,
    last_sync: Instant,
    dirty: bool,
    dropped: u64,
    corrupt: u64,
    /// Test hook: the next append writes only this many bytes and then fails, as a full disk
    /// would.
    #[cfg(test)]
    fail_after: Option<usize>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, checking every segment and cutting off a torn
    /// or corrupt tail. Always starts a fresh segment for appending.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir, "creating the folder"))?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir, "listing the folder"))? {
            let entry = entry.map_err(io_err(dir, "listing the folder"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                // A cursor update interrupted before its rename; the old cursor still holds.
                let _ = fs::remove_file(entry.path());
            }
        }
        seqs.sort_unstable();

        let mut corrupt = 0;
        let mut segments = VecDeque::new();
        for seq in seqs {
            let path = seg_path(dir, seq);
            let (bytes, records, bad_tail) = scan_segment(&path)?;
            if bad_tail > 0 {
                tracing::warn!(
                    file = %path.display(),
                    good_records = records,
                    skipped_bytes = bad_tail,
                    "spool segment ends in a torn or corrupt record (crash mid-write?); cutting it off"
                );
                corrupt += 1;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "opening to cut a torn tail"))?;
                f.set_len(bytes)
                    .map_err(io_err(&path, "cutting a torn tail"))?;
                f.sync_all().map_err(io_err(&path, "syncing"))?;
            }
            segments.push_back(Segment {
                seq,
                bytes,
                records,
            });
        }

        let cursor_path = dir.join("cursor");
        let first = segments.front().map(|s| s.seq).unwrap_or(0);
        let mut cursor = match fs::read_to_string(&cursor_path) {
            Ok(text) => parse_cursor(&text).ok_or_else(|| SpoolError::BadCursor {
                path: cursor_path.clone(),
                found: text.chars().take(80).collect(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Position {
                seq: first,
                offset: 0,
                index: 0,
            },
            Err(e) => return Err(io_err(&cursor_path, "reading")(e)),
        };
        // Clamp a cursor that points past a segment cut back above, or into deleted segments.
        if let Some(seg) = segments.iter().find(|s| s.seq == cursor.seq) {
            if cursor.offset > seg.bytes {
                cursor.offset = seg.bytes;
                cursor.index = seg.records;
            }
        } else if let Some(seg) = segments.iter().find(|s| s.seq > cursor.seq) {
            cursor = Position {
                seq: seg.seq,
                offset: 0,
                index: 0,
            };
        }
        // Segments wholly before the cursor are acknowledged: remove them.
        while segments.front().is_some_and(|s| s.seq < cursor.seq) {
            if let Some(s) = segments.pop_front() {
                let _ = fs::remove_file(seg_path(dir, s.seq));
            }
        }

        let next = segments
            .back()
            .map(|s| s.seq + 1)
            .unwrap_or(cursor.seq.max(1));
        if segments.is_empty() {
            cursor = Position {
                seq: next,
                offset: 0,
                index: 0,
            };
        }
        let writer = create_segment(dir, next)?;
        segments.push_back(Segment {
            seq: next,
            bytes: 0,
            records: 0,
        });
        let spool = Spool {
            dir: dir.to_path_buf(),
            opts,
            segments,
            writer,
            cursor,
            reader: None,
            last_sync: Instant::now(),
            dirty: false,
            dropped: 0,
            corrupt,
            #[cfg(test)]
            fail_after: None,
        };
        spool.write_cursor()?;
        Ok(spool)
    }

    /// Appends one record per line. Each line must be one complete line-protocol line
    /// (newline-terminated). Applies the size bound first and the fsync policy after.
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
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            buf.extend_from_slice(payload);
            records += 1;
        }
        if records == 0 {
            return Ok(());
        }
        let need = buf.len() as u64;
        if self.active().bytes > 0 && self.active().bytes + need > self.opts.segment_bytes {
            self.roll()?;
        }
        self.enforce_bound(need)?;
        let path = seg_path(&self.dir, self.active().seq);
        if let Err(e) = self.write_active(&buf) {
            self.undo_torn_append(&path);
            return Err(io_err(&path, "appending")(e));
        }
        let seg = self.active_mut();
        seg.bytes += need;
        seg.records += records;
        self.dirty = true;
        match self.opts.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync()?,
            _ => {}
        }
        Ok(())
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
            let (seg_bytes, seg_records) = (seg.bytes, seg.records);
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
            let path = seg_path(&self.dir, pos.seq);
            let file = self.reader_for(pos.seq)?;
            file.seek(SeekFrom::Start(pos.offset))
                .map_err(io_err(&path, "seeking"))?;
            let mut r = io::BufReader::with_capacity(64 << 10, &mut *file);
            while (batch.count as usize) < max && pos.offset < seg_bytes {
                match read_record(&mut r, seg_bytes - pos.offset) {
                    Ok(Some(payload)) => {
                        pos.offset += HEADER + payload.len() as u64;
                        pos.index += 1;
                        batch.end = Some(pos);
                        match std::str::from_utf8(&payload) {
                            Ok(s) => {
                                batch.body.push_str(s);
                                batch.count += 1;
                            }
                            Err(_) => {
                                tracing::warn!(file = %path.display(), offset = pos.offset,
                                    "spool record is not UTF-8 despite a good checksum; skipped");
                                corrupt += 1;
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        // Corruption inside a segment after it was checked at open: skip the
                        // rest of the segment rather than loop on it.
                        let lost = seg_records.saturating_sub(pos.index);
                        tracing::warn!(file = %path.display(), offset = pos.offset, lost_records = lost,
                            "corrupt spool record; skipping the rest of the segment");
                        corrupt += lost.max(1);
                        pos.offset = seg_bytes;
                        pos.index = seg_records;
                        batch.end = Some(pos);
                    }
                }
            }
        }
        self.corrupt += corrupt;
        Ok(batch)
    }

    /// Marks everything before `end` as acknowledged: stores the cursor durably and deletes
    /// segments that are fully acknowledged.
    pub fn commit(&mut self, end: Position) -> Result<(), SpoolError> {
        if end <= self.cursor {
            return Ok(());
        }
        self.cursor = end;
        self.write_cursor()?;
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
                fs::remove_file(&path)
                    .map_err(io_err(&path, "deleting an acknowledged segment"))?;
            }
        }
        Ok(())
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
        }
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
    /// reader, which computes offsets from the tracked length, would hit a checksum failure and
    /// skip every good record after them. So cut the file back to its known length (the writer
    /// appends, so the next write lands there); if that fails, start a fresh segment, whose
    /// tracked length the reader stops at, leaving the torn bytes unread.
    fn undo_torn_append(&mut self, path: &Path) {
        let known = self.active().bytes;
        match self.writer.set_len(known) {
            Ok(()) => {
                tracing::warn!(file = %path.display(), bytes = known, "append failed; cut the segment back to its last whole record");
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
        });
        Ok(())
    }

    /// Deletes the oldest segments until `need` more bytes fit under the bound. The active
    /// segment is never deleted, so a bound smaller than one segment still accepts data.
    fn enforce_bound(&mut self, need: u64) -> Result<(), SpoolError> {
        loop {
            let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
            if total + need <= self.opts.max_bytes || self.segments.len() < 2 {
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

    fn reader_for(&mut self, seq: u64) -> Result<&mut File, SpoolError> {
        if self.reader.as_ref().map(|(q, _)| *q) != Some(seq) {
            let path = seg_path(&self.dir, seq);
            let f = File::open(&path).map_err(io_err(&path, "opening for reading"))?;
            self.reader = Some((seq, f));
        }
        Ok(&mut self
            .reader
            .as_mut()
            .expect("spool invariant: reader was just opened")
            .1)
    }

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
        Ok(())
    }
}

fn parse_cursor(text: &str) -> Option<Position> {
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>().ok());
    let p = Position {
        seq: it.next()??,
        offset: it.next()??,
        index: it.next()??,
    };
    it.next().is_none().then_some(p)
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

/// Reads one record; `Ok(None)` when the header or payload is torn, too large or fails its
/// checksum. `left` is how many bytes of the segment remain.
fn read_record(r: &mut impl Read, left: u64) -> io::Result<Option<Vec<u8>>> {
    if left < HEADER {
        return Ok(None);
    }
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_RECORD || u64::from(len) > left - HEADER {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((crc32fast::hash(&payload) == crc).then_some(payload))
}

/// Checks a segment: returns its good length, its good record count and the bytes after the
/// last good record.
fn scan_segment(path: &Path) -> Result<(u64, u64, u64), SpoolError> {
    let f = File::open(path).map_err(io_err(path, "opening for checking"))?;
    let size = f
        .metadata()
        .map_err(io_err(path, "reading the size"))?
        .len();
    let mut r = io::BufReader::with_capacity(64 << 10, f);
    let (mut off, mut records) = (0u64, 0u64);
    while off < size {
        match read_record(&mut r, size - off) {
            Ok(Some(p)) => {
                off += HEADER + p.len() as u64;
                records += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok((off, records, size - off))
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

    #[test]
    fn corrupt_cursor_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Spool::open(dir.path(), opts(1 << 20)).expect("open"));
        fs::write(dir.path().join("cursor"), "garbage").expect("write");
        let e = Spool::open(dir.path(), opts(1 << 20)).expect_err("bad cursor");
        assert!(e.to_string().contains("cursor"), "{e}");
    }
}

//! Opening the spool is its recovery: every segment is checked (`record::scan`), a torn
//! tail is cut off, damaged records are noted to be skipped, acknowledged segments are
//! deleted, and an unusable cursor is rebuilt from the segments, replaying rather than
//! skipping.

use super::record::{scan, Format};
use super::{create_segment, io_err, seg_path, Position, Segment, Spool, SpoolError, SpoolOptions};
use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Instant;

impl Spool {
    /// Opens (or creates) the spool in `dir`, checking every segment: a torn tail is cut off,
    /// damaged records in the middle are noted and skipped, an unusable cursor is rebuilt.
    /// Always starts a fresh segment for appending.
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

        let cursor_path = dir.join("cursor");
        let mut resets = 0;
        let mut cursor = match fs::read(&cursor_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let parsed = parse_cursor(&text);
                if parsed.is_none() {
                    tracing::warn!(
                        file = %cursor_path.display(),
                        found = %text.chars().take(80).collect::<String>().escape_debug(),
                        "spool cursor is not `<segment> <offset> <index>` (empty after a power loss, or damaged); \
                         rebuilding it from the segments: the oldest spooled points are sent again, none are lost"
                    );
                    resets += 1;
                }
                parsed
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&cursor_path, "reading")(e)),
        };
        // A cursor beyond every segment cannot be right (segments are deleted only after the
        // cursor has passed them, and the active one always exists): replay rather than
        // treat everything as acknowledged.
        if let (Some(c), Some(last)) = (cursor, seqs.last()) {
            if c.seq > *last {
                tracing::warn!(file = %cursor_path.display(), cursor_segment = c.seq, last_segment = last,
                    "spool cursor points past the last segment; rebuilding it from the segments (points may be sent twice)");
                resets += 1;
                cursor = None;
            }
        }

        let mut corrupt = 0;
        let mut segments = VecDeque::new();
        let last_seq = seqs.last().copied();
        for seq in seqs {
            let path = seg_path(dir, seq);
            if cursor.is_some_and(|c| seq < c.seq) {
                // Wholly before the cursor: acknowledged.
                let _ = fs::remove_file(&path);
                continue;
            }
            let buf = fs::read(&path).map_err(io_err(&path, "reading for checking"))?;
            let want = cursor.filter(|c| c.seq == seq).map(|c| c.offset);
            let sc = scan(&buf, want);
            for &(start, end, lost) in &sc.skips {
                tracing::warn!(
                    file = %path.display(),
                    offset = start,
                    skipped_bytes = end - start,
                    lost_records = lost,
                    "damaged spool record in the middle of a segment (changed on disk after it was written, not a crash mid-write); skipping it and keeping the valid records after it"
                );
                corrupt += lost;
            }
            if sc.tail > 0 {
                let why = if Some(seq) == last_seq {
                    "the last spool segment ends in a torn record (a crash mid-write); cutting it off"
                } else {
                    "a spool segment ends in an incomplete or damaged record; cutting it off"
                };
                tracing::warn!(file = %path.display(), good_records = sc.records,
                    skipped_bytes = sc.tail, lost_records = sc.tail_records, "{why}");
                corrupt += sc.tail_records;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "opening to cut a torn tail"))?;
                f.set_len(sc.good)
                    .map_err(io_err(&path, "cutting a torn tail"))?;
                f.sync_all().map_err(io_err(&path, "syncing"))?;
            }
            if let (Some(c), Some((boundary, index))) = (cursor.as_mut(), sc.at) {
                if c.offset > buf.len() as u64 {
                    tracing::warn!(file = %cursor_path.display(), offset = c.offset, segment_bytes = buf.len(),
                        "spool cursor points past the end of its segment; replaying the segment from its start (points may be sent twice)");
                    resets += 1;
                    (c.offset, c.index) = (0, 0);
                } else {
                    // Between records (or inside a cut tail): the boundary at or before it,
                    // so nothing unacknowledged is skipped.
                    (c.offset, c.index) = (boundary, index);
                }
            }
            segments.push_back(Segment {
                seq,
                bytes: sc.good,
                records: sc.records,
                format: sc.format,
                skips: sc.skips.iter().map(|s| (s.0, s.1)).collect(),
            });
        }

        let mut cursor = match (cursor, segments.front()) {
            // The cursor's segment is gone (deleted at the size bound): the next one.
            (Some(c), Some(first)) if !segments.iter().any(|s| s.seq == c.seq) => Position {
                seq: segments
                    .iter()
                    .find(|s| s.seq > c.seq)
                    .map_or(first.seq, |s| s.seq),
                offset: 0,
                index: 0,
            },
            (Some(c), _) => c,
            (None, first) => Position {
                seq: first.map_or(0, |s| s.seq),
                offset: 0,
                index: 0,
            },
        };

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
            format: Format::Marked,
            skips: Vec::new(),
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
            append_failing: false,
            sync_failing: false,
            dropped: 0,
            corrupt,
            cursor_resets: resets,
            #[cfg(test)]
            fail_after: None,
        };
        // A full disk must not keep the daemon from starting: the cursor is stored again
        // with the next acknowledged batch, and until then the old one (or none) holds, which
        // at worst replays points.
        if let Err(e) = spool.write_cursor() {
            tracing::warn!(error = %e, "could not store the spool cursor at start; it is stored with the next acknowledged batch");
        }
        Ok(spool)
    }
}

pub(super) fn parse_cursor(text: &str) -> Option<Position> {
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>().ok());
    let p = Position {
        seq: it.next()??,
        offset: it.next()??,
        index: it.next()??,
    };
    it.next().is_none().then_some(p)
}

//! The on-disk spool: where the oldest unacknowledged reports go when the in-memory backlog is full, so
//! a long server outage costs disk space instead of memory or reports.
//!
//! # Layout
//!
//! The spool directory holds a `lock` file, which the running agent holds an exclusive `flock(2)` on (so
//! two agents never share a spool), and segment files `RUNID-NNNNNNNNNN.seg`. A segment is append-only:
//!
//! ```text
//! header:  "SFSPOOL1" | run-id length: u8 | run id (ASCII) | CRC-32 of the preceding header bytes: u32 LE
//! record:  payload length: u32 LE | CRC-32 of (sequence, payload): u32 LE | sequence: u64 LE | payload
//! ```
//!
//! A payload is a protobuf-encoded `sockfleet.v1.Report`, opaque to this module. Records are in
//! sequence order within a segment and segments are in sequence order, so the spool as a whole is a
//! queue: it is read from its oldest record on and records leave it only at the front. A record leaves
//! when the server acknowledges it or when it is dropped; the file of a segment is deleted once every
//! record in it has left. When the spool is full the oldest segment is dropped as a whole (its pending
//! records counted as dropped), since deleting whole files is the only way to give space back to an
//! append-only store.
//!
//! # Durability
//!
//! The spool is there to outlive a server outage, not a crash of the host, and nothing is `fsync`ed:
//! records reach the page cache with one `write(2)` each, which survives a crash of the agent itself.
//! Sequence numbers are only meaningful within one agent run (the server deduplicates by run id), so an
//! agent starting up discards the segments an earlier run left behind, with a log line saying how many
//! reports they held. The run id in each segment header and a checksum on every record are what a later
//! version would need to deliver such segments under their own run id, skipping a record torn by a
//! crash; [`scan_segment`] already reads segments that way.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// First bytes of every segment: format name and version.
const MAGIC: &[u8; 8] = b"SFSPOOL1";
/// Bytes before each record's payload: length, checksum, sequence.
const RECORD_HEADER: u64 = 16;
/// The largest payload a record may have; a longer length in a file means the file is damaged.
pub const MAX_RECORD: u64 = 16 << 20;
/// Bounds of the size at which a segment is closed and a new one started.
const MIN_SEGMENT: u64 = 4 << 10;
const MAX_SEGMENT: u64 = 1 << 20;
/// Extension of segment files; the spool never touches other files in its directory but `lock`.
const SEGMENT_EXTENSION: &str = "seg";
const LOCK_FILE: &str = "lock";

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The spool directory; created (mode 0700) if missing.
    pub dir: PathBuf,
    /// Most bytes the segment files may take together.
    pub max_bytes: u64,
}

impl SpoolSettings {
    /// Default bound of the spool: 64 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
    /// Smallest bound accepted: 64 KiB.
    pub const MIN_MAX_BYTES: u64 = 64 << 10;
}

/// What making room in a full spool dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Pending records dropped.
    pub reports: u64,
    /// Of those, records that could not be read back (their payload was not passed on).
    pub unreadable: u64,
    /// The highest sequence dropped (0 if none).
    pub last_sequence: u64,
}

/// The reports a run has spooled and not yet seen acknowledged or dropped; see the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    run_id: String,
    header: Vec<u8>,
    max_bytes: u64,
    segment_target: u64,
    /// Oldest first; `writer` appends to the last one when it is open.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_segment: u64,
    /// Bytes of every segment file.
    bytes: u64,
    /// Every record with a sequence up to this one has left the spool (acknowledged or dropped).
    floor: u64,
    cursor: Option<Cursor>,
    /// Records found damaged since the last [`Spool::take_unreadable`].
    unreadable: u64,
    /// Holds the directory's `flock` for the life of the spool.
    _lock: File,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes of complete records (and the header) in the file.
    bytes: u64,
    /// The sequences of the records in the file, as inclusive runs; usually one run.
    ranges: Vec<(u64, u64)>,
}

impl Segment {
    fn last(&self) -> u64 {
        self.ranges.last().map_or(0, |range| range.1)
    }

    /// Records with a sequence above `floor`.
    fn count_above(&self, floor: u64) -> u64 {
        self.ranges
            .iter()
            .filter(|(_, end)| *end > floor)
            .map(|(start, end)| end - floor.max(start - 1))
            .sum()
    }

    /// The first sequence above `floor`.
    fn first_above(&self, floor: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|(_, end)| *end > floor)
            .map(|(start, _)| (*start).max(floor + 1))
    }

    fn add(&mut self, sequence: u64) {
        match self.ranges.last_mut() {
            Some((_, end)) if *end + 1 == sequence => *end = sequence,
            _ => self.ranges.push((sequence, sequence)),
        }
    }

    /// Forgets the records after `sequence` (they cannot be read); returns how many above `floor` went.
    fn truncate_after(&mut self, sequence: u64, floor: u64) -> u64 {
        let lost = self.count_above(sequence.max(floor));
        self.ranges.retain(|(start, _)| *start <= sequence);
        if let Some((_, end)) = self.ranges.last_mut() {
            *end = (*end).min(sequence);
        }
        lost
    }
}

/// A reader positioned in one segment, reused while the stream reads the spool in order.
#[derive(Debug)]
struct Cursor {
    segment: u64,
    records: RecordReader<File>,
    /// Sequence of the last record read (0 before the first).
    last: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool directory for run `run_id`, locks it, and deletes the
    /// segments an earlier run left there, logging what they held.
    pub fn open(settings: &SpoolSettings, run_id: &str) -> io::Result<Spool> {
        if run_id.is_empty()
            || run_id.len() > usize::from(u8::MAX)
            || !run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("run id {run_id:?} cannot name spool segments"),
            ));
        }
        if settings.max_bytes < SpoolSettings::MIN_MAX_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a spool of {} bytes is smaller than the minimum {}",
                    settings.max_bytes,
                    SpoolSettings::MIN_MAX_BYTES
                ),
            ));
        }
        let dir = settings.dir.clone();
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let lock = lock_directory(&dir)?;
        discard_earlier_runs(&dir)?;
        Ok(Spool {
            header: segment_header(run_id),
            run_id: run_id.to_owned(),
            max_bytes: settings.max_bytes,
            segment_target: (settings.max_bytes / 32).clamp(MIN_SEGMENT, MAX_SEGMENT),
            segments: VecDeque::new(),
            writer: None,
            next_segment: 1,
            bytes: 0,
            floor: 0,
            cursor: None,
            unreadable: 0,
            dir,
            _lock: lock,
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the segment files take.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records neither acknowledged nor dropped.
    pub fn len(&self) -> u64 {
        self.segments
            .iter()
            .map(|segment| segment.count_above(self.floor))
            .sum()
    }

    /// Whether no record is pending.
    pub fn is_empty(&self) -> bool {
        self.oldest().is_none()
    }

    /// Sequence of the oldest pending record.
    pub fn oldest(&self) -> Option<u64> {
        self.segments
            .iter()
            .find_map(|segment| segment.first_above(self.floor))
    }

    /// Records found damaged (and so dropped) since the last call.
    pub fn take_unreadable(&mut self) -> u64 {
        std::mem::take(&mut self.unreadable)
    }

    /// Appends a record, which must be newer than every record in the spool. If the spool is full, the
    /// oldest segments are dropped first: `carry` sees the payload of each pending record they held,
    /// oldest first, and `evicted` counts them.
    ///
    /// On error the record was not stored (and the caller still has it); the spool stays usable.
    pub fn append(
        &mut self,
        sequence: u64,
        payload: &[u8],
        evicted: &mut Evicted,
        carry: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let header = self.header.len() as u64;
        let record = RECORD_HEADER + payload.len() as u64;
        if payload.len() as u64 > MAX_RECORD || header + record > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a report of {} bytes does not fit in the spool",
                    payload.len()
                ),
            ));
        }
        debug_assert!(
            sequence
                > self
                    .segments
                    .back()
                    .map_or(0, Segment::last)
                    .max(self.floor),
            "spool records must be appended in sequence order"
        );
        let new_segment = loop {
            let new_segment = self.writer.is_none()
                || self.segments.back().is_none_or(|last| {
                    last.bytes + record > self.segment_target && !last.ranges.is_empty()
                });
            let needed = record + if new_segment { header } else { 0 };
            if self.bytes + needed <= self.max_bytes {
                break new_segment;
            }
            self.evict_oldest(evicted, carry);
        };
        if new_segment {
            self.start_segment()?;
        }
        let mut buffer = Vec::with_capacity(record as usize);
        buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&record_checksum(sequence, payload).to_le_bytes());
        buffer.extend_from_slice(&sequence.to_le_bytes());
        buffer.extend_from_slice(payload);
        let written = match self.writer.as_mut() {
            Some(writer) => writer.write_all(&buffer),
            None => Err(io::Error::other("no open segment")),
        };
        let segment = self
            .segments
            .back_mut()
            .expect("a segment is open for writing");
        if let Err(error) = written {
            // Part of the record may be in the file: close the segment so nothing follows it there,
            // and account for whatever reached the disk.
            self.writer = None;
            let on_disk = fs::metadata(&segment.path).map_or(segment.bytes, |m| m.len());
            self.bytes += on_disk.saturating_sub(segment.bytes);
            segment.bytes = segment.bytes.max(on_disk);
            self.remove_finished();
            return Err(error);
        }
        segment.bytes += record;
        segment.add(sequence);
        self.bytes += record;
        Ok(())
    }

    /// Forgets every record up to and including `sequence`; deletes the segments left empty.
    pub fn acknowledge(&mut self, sequence: u64) {
        self.floor = self.floor.max(sequence);
        self.remove_finished();
    }

    /// Drops the oldest pending record, handing its payload to `carry`; returns its sequence. Damaged
    /// records in the way are dropped too (see [`Spool::take_unreadable`]).
    pub fn drop_oldest(&mut self, carry: &mut dyn FnMut(&[u8])) -> Option<u64> {
        let (sequence, payload) = self.read_after(self.floor)?;
        carry(&payload);
        self.floor = sequence;
        self.remove_finished();
        Some(sequence)
    }

    /// The oldest pending record with a sequence above `sequence`, read from disk. Damaged records in
    /// the way are dropped (see [`Spool::take_unreadable`]).
    pub fn read_after(&mut self, sequence: u64) -> Option<(u64, Vec<u8>)> {
        let after = sequence.max(self.floor);
        loop {
            let index = self.segments.iter().position(|s| s.last() > after)?;
            let segment = &self.segments[index];
            let reusable = self
                .cursor
                .as_ref()
                .is_some_and(|cursor| cursor.segment == segment.id && cursor.last <= after);
            if !reusable {
                self.cursor = None;
                match open_records(&segment.path, self.header.len() as u64, segment.bytes) {
                    Ok(records) => {
                        self.cursor = Some(Cursor {
                            segment: segment.id,
                            records,
                            last: 0,
                        });
                    }
                    Err(error) => {
                        self.damaged(index, 0, &error.to_string());
                        continue;
                    }
                }
            }
            let cursor = self.cursor.as_mut().expect("cursor just positioned");
            cursor.records.limit = segment.bytes;
            loop {
                match cursor.records.next_record() {
                    Ok(Some((found, payload))) => {
                        cursor.last = found;
                        if found > after {
                            return Some((found, payload));
                        }
                    }
                    Ok(None) => {
                        let last = cursor.last;
                        self.damaged(index, last, "segment ends before its last record");
                        break;
                    }
                    Err(problem) => {
                        let last = cursor.last;
                        self.damaged(index, last, &problem);
                        break;
                    }
                }
            }
        }
    }

    /// Drops the records of segment `index` after `last_good`, which cannot be read.
    fn damaged(&mut self, index: usize, last_good: u64, problem: &str) {
        self.cursor = None;
        let is_last = index + 1 == self.segments.len();
        let segment = &mut self.segments[index];
        let lost = segment.truncate_after(last_good, self.floor);
        tracing::warn!(
            segment = %segment.path.display(),
            problem,
            lost,
            "spooled reports are unreadable; dropped them"
        );
        self.unreadable += lost;
        if is_last {
            // Nothing more goes into a damaged segment.
            self.writer = None;
        }
        self.remove_finished();
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let id = self.next_segment;
        self.next_segment += 1;
        let path = self
            .dir
            .join(format!("{}-{id:010}.{SEGMENT_EXTENSION}", self.run_id));
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        if let Err(error) = file.write_all(&self.header) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        self.writer = Some(file);
        self.bytes += self.header.len() as u64;
        self.segments.push_back(Segment {
            id,
            path,
            bytes: self.header.len() as u64,
            ranges: Vec::new(),
        });
        Ok(())
    }

    /// Drops the oldest segment to make room, pending records included.
    fn evict_oldest(&mut self, evicted: &mut Evicted, carry: &mut dyn FnMut(&[u8])) {
        let Some(segment) = self.segments.pop_front() else {
            return;
        };
        if self.segments.is_empty() {
            self.writer = None;
        }
        if self
            .cursor
            .as_ref()
            .is_some_and(|cursor| cursor.segment == segment.id)
        {
            self.cursor = None;
        }
        let pending = segment.count_above(self.floor);
        if pending > 0 {
            let mut readable = 0;
            if let Ok(mut records) =
                open_records(&segment.path, self.header.len() as u64, segment.bytes)
            {
                while let Ok(Some((sequence, payload))) = records.next_record() {
                    if sequence > self.floor && sequence <= segment.last() {
                        readable += 1;
                        carry(&payload);
                    }
                }
            }
            evicted.reports += pending;
            evicted.unreadable += pending.saturating_sub(readable);
            evicted.last_sequence = evicted.last_sequence.max(segment.last());
        }
        self.floor = self.floor.max(segment.last());
        self.delete(&segment);
    }

    /// Deletes the segments whose every record has left.
    fn remove_finished(&mut self) {
        while let Some(front) = self.segments.front() {
            if front.last() > self.floor {
                break;
            }
            // An empty segment at the back is one whose first record failed to go in; writing on
            // after it is fine, but it is not worth keeping either.
            let segment = self.segments.pop_front().expect("front exists");
            if self.segments.is_empty() {
                self.writer = None;
            }
            if self
                .cursor
                .as_ref()
                .is_some_and(|cursor| cursor.segment == segment.id)
            {
                self.cursor = None;
            }
            self.delete(&segment);
        }
    }

    fn delete(&mut self, segment: &Segment) {
        match fs::remove_file(&segment.path) {
            Ok(()) => self.bytes = self.bytes.saturating_sub(segment.bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.bytes = self.bytes.saturating_sub(segment.bytes);
            }
            Err(error) => {
                // Still forgotten: the bound then undercounts by this file until the next start.
                self.bytes = self.bytes.saturating_sub(segment.bytes);
                tracing::warn!(%error, segment = %segment.path.display(), "cannot delete a spool segment");
            }
        }
    }
}

/// What [`scan_segment`] found in a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The run that wrote the segment.
    pub run_id: String,
    /// Intact records.
    pub records: u64,
    /// Why reading stopped before the end of the file (a torn or damaged record), if it did.
    pub damage: Option<String>,
}

/// Reads a segment file record by record, passing each intact record's sequence and payload to
/// `record`; stops at the first torn or damaged record and says so.
pub fn scan_segment(path: &Path, mut record: impl FnMut(u64, &[u8])) -> io::Result<SegmentScan> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let run_id = read_header(&mut file)?;
    let header = segment_header(&run_id).len() as u64;
    let mut records = RecordReader {
        reader: BufReader::new(file),
        offset: header,
        limit: length,
    };
    let mut scan = SegmentScan {
        run_id,
        records: 0,
        damage: None,
    };
    loop {
        match records.next_record() {
            Ok(Some((sequence, payload))) => {
                scan.records += 1;
                record(sequence, &payload);
            }
            Ok(None) => return Ok(scan),
            Err(problem) => {
                scan.damage = Some(format!("at byte {}: {problem}", records.offset));
                return Ok(scan);
            }
        }
    }
}

/// Records of a segment between `offset` and `limit` (bytes known to be complete).
#[derive(Debug)]
struct RecordReader<R> {
    reader: BufReader<R>,
    offset: u64,
    limit: u64,
}

impl<R: Read> RecordReader<R> {
    /// The next record; `Ok(None)` at `limit`; `Err` with what is wrong when the bytes are not a
    /// record (a torn write, a damaged file).
    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, String> {
        if self.offset >= self.limit {
            return Ok(None);
        }
        if self.limit - self.offset < RECORD_HEADER {
            return Err("torn record header".to_owned());
        }
        let mut head = [0_u8; RECORD_HEADER as usize];
        self.reader
            .read_exact(&mut head)
            .map_err(|error| format!("cannot read a record header: {error}"))?;
        let length = u64::from(u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")));
        let checksum = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let sequence = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if length > MAX_RECORD || RECORD_HEADER + length > self.limit - self.offset {
            return Err(format!(
                "record length {length} runs past the end of the segment (torn write?)"
            ));
        }
        let mut payload = vec![0_u8; length as usize];
        self.reader
            .read_exact(&mut payload)
            .map_err(|error| format!("cannot read a record: {error}"))?;
        if record_checksum(sequence, &payload) != checksum {
            return Err(format!("checksum mismatch in record {sequence}"));
        }
        self.offset += RECORD_HEADER + length;
        Ok(Some((sequence, payload)))
    }
}

fn open_records(path: &Path, header: u64, limit: u64) -> io::Result<RecordReader<File>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(header))?;
    Ok(RecordReader {
        reader: BufReader::new(file),
        offset: header,
        limit,
    })
}

fn segment_header(run_id: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(MAGIC.len() + 1 + run_id.len() + 4);
    header.extend_from_slice(MAGIC);
    header.push(u8::try_from(run_id.len()).expect("run id checked to fit a u8 length"));
    header.extend_from_slice(run_id.as_bytes());
    let checksum = crc32(0, &header);
    header.extend_from_slice(&checksum.to_le_bytes());
    header
}

/// Reads and checks a segment header; returns the run id it names.
fn read_header(reader: &mut impl Read) -> io::Result<String> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut magic = [0_u8; 9];
    reader.read_exact(&mut magic)?;
    if &magic[..8] != MAGIC {
        return Err(bad("not a sockfleet spool segment (bad magic)"));
    }
    let mut run_id = vec![0_u8; usize::from(magic[8])];
    reader.read_exact(&mut run_id)?;
    let mut checksum = [0_u8; 4];
    reader.read_exact(&mut checksum)?;
    let expected = crc32(crc32(0, &magic), &run_id);
    if u32::from_le_bytes(checksum) != expected {
        return Err(bad("segment header checksum mismatch"));
    }
    String::from_utf8(run_id).map_err(|_| bad("segment run id is not text"))
}

/// Takes the directory's lock, or says which agent holds it.
fn lock_directory(dir: &Path) -> io::Result<File> {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: flock(2) on a descriptor we own, with valid flags.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another sockfleet-agent is using this spool directory; give each agent its own",
            ));
        }
        return Err(error);
    }
    Ok(lock)
}

/// Deletes the segments of earlier runs, saying per run how many reports are lost with them.
fn discard_earlier_runs(dir: &Path) -> io::Result<()> {
    let mut runs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXTENSION) {
            continue;
        }
        match scan_segment(&path, |_, _| {}) {
            Ok(scan) => {
                if let Some(damage) = &scan.damage {
                    tracing::debug!(segment = %path.display(), damage, "earlier spool segment ends damaged");
                }
                let run = runs.entry(scan.run_id).or_default();
                run.0 += 1;
                run.1 += scan.records;
            }
            Err(error) => {
                tracing::warn!(%error, segment = %path.display(), "unreadable spool segment of an earlier run");
            }
        }
        fs::remove_file(&path)?;
    }
    for (run_id, (segments, reports)) in runs {
        tracing::warn!(
            dir = %dir.display(),
            run_id,
            segments,
            reports,
            "discarded reports an earlier agent run spooled and never delivered (a new run cannot send \
             another run's reports)"
        );
    }
    Ok(())
}

fn record_checksum(sequence: u64, payload: &[u8]) -> u32 {
    crc32(crc32(0, &sequence.to_le_bytes()), payload)
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`), continuing from `crc`.
fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0_u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut value = i as u32;
            let mut bit = 0;
            while bit < 8 {
                value = if value & 1 == 1 {
                    0xEDB8_8320 ^ (value >> 1)
                } else {
                    value >> 1
                };
                bit += 1;
            }
            table[i] = value;
            i += 1;
        }
        table
    };
    let mut crc = !crc;
    for byte in bytes {
        crc = TABLE[((crc ^ u32::from(*byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "sockfleet-spool-{name}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn settings(dir: &TempDir, max_bytes: u64) -> SpoolSettings {
        SpoolSettings {
            dir: dir.0.join("spool"),
            max_bytes,
        }
    }

    fn payload(sequence: u64, size: usize) -> Vec<u8> {
        (0..size).map(|i| (sequence as usize + i) as u8).collect()
    }

    fn append(spool: &mut Spool, sequence: u64, size: usize) -> (Evicted, Vec<Vec<u8>>) {
        let mut evicted = Evicted::default();
        let mut carried = Vec::new();
        spool
            .append(sequence, &payload(sequence, size), &mut evicted, &mut |p| {
                carried.push(p.to_vec())
            })
            .unwrap();
        (evicted, carried)
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == SEGMENT_EXTENSION))
            .collect();
        files.sort();
        files
    }

    fn disk_bytes(dir: &Path) -> u64 {
        segment_files(dir)
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"12345"), b"6789"), 0xCBF4_3926);
    }

    #[test]
    fn segments_encode_and_decode() {
        let dir = TempDir::new("codec");
        let settings = settings(&dir, 1 << 20);
        let mut spool = Spool::open(&settings, "run1").unwrap();
        for sequence in 1..=5 {
            append(&mut spool, sequence, 100 + sequence as usize);
        }
        assert_eq!(spool.len(), 5);
        assert_eq!(spool.oldest(), Some(1));
        let files = segment_files(&settings.dir);
        assert_eq!(files.len(), 1);
        assert_eq!(spool.bytes(), disk_bytes(&settings.dir));
        assert!(
            files[0]
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("run1-")
        );

        let mut seen = Vec::new();
        let scan = scan_segment(&files[0], |sequence, bytes| {
            assert_eq!(bytes, payload(sequence, 100 + sequence as usize));
            seen.push(sequence);
        })
        .unwrap();
        assert_eq!(
            scan,
            SegmentScan {
                run_id: "run1".into(),
                records: 5,
                damage: None
            }
        );
        assert_eq!(seen, [1, 2, 3, 4, 5]);

        // Read back in order, and again from an earlier point (a reconnect).
        assert_eq!(spool.read_after(0), Some((1, payload(1, 101))));
        assert_eq!(spool.read_after(1).map(|r| r.0), Some(2));
        assert_eq!(spool.read_after(2).map(|r| r.0), Some(3));
        assert_eq!(spool.read_after(0).map(|r| r.0), Some(1));
        assert_eq!(spool.read_after(4), Some((5, payload(5, 105))));
        assert_eq!(spool.read_after(5), None);

        let mut garbage = fs::read(&files[0]).unwrap();
        garbage[0] = b'X';
        let other = dir.0.join("other.seg");
        fs::write(&other, garbage).unwrap();
        assert_eq!(
            scan_segment(&other, |_, _| {}).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn torn_write_is_detected_and_skipped() {
        let dir = TempDir::new("torn");
        let settings = settings(&dir, 1 << 20);
        let path = {
            let mut spool = Spool::open(&settings, "crashed").unwrap();
            for sequence in 1..=4 {
                append(&mut spool, sequence, 200);
            }
            segment_files(&settings.dir).remove(0)
        };
        // A crash in the middle of writing record 4: only part of it reached the disk.
        let full = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 50).unwrap();
        drop(file);
        let mut seen = Vec::new();
        let scan = scan_segment(&path, |sequence, _| seen.push(sequence)).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert!(scan.damage.unwrap().contains("torn"));

        // Garbage instead of a record (a filesystem that zero-fills after a crash).
        let mut bytes = fs::read(&path).unwrap();
        let third = bytes.len() - (200 - 50 + 16) - (200 + 16);
        bytes[third + 20] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let scan = scan_segment(&path, |sequence, _| seen.push(sequence)).unwrap();
        assert_eq!(seen, [1, 2]);
        assert!(scan.damage.unwrap().contains("checksum"));

        // The next run finds the segment, says so, and starts empty.
        let spool = Spool::open(&settings, "next").unwrap();
        assert!(spool.is_empty());
        assert!(segment_files(&settings.dir).is_empty());
    }

    #[test]
    fn damaged_records_in_a_live_spool_are_dropped_and_counted() {
        let dir = TempDir::new("damaged");
        let settings = settings(&dir, 1 << 20);
        let mut spool = Spool::open(&settings, "run").unwrap();
        for sequence in 1..=4 {
            append(&mut spool, sequence, 100);
        }
        let path = segment_files(&settings.dir).remove(0);
        let mut bytes = fs::read(&path).unwrap();
        let header = spool.header.len();
        // Damage record 3's payload.
        bytes[header + 2 * 116 + 16 + 5] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();

        assert_eq!(spool.read_after(0).map(|r| r.0), Some(1));
        assert_eq!(spool.read_after(1).map(|r| r.0), Some(2));
        // 3 is damaged and 4 cannot be found after it.
        assert_eq!(spool.read_after(2), None);
        assert_eq!(spool.take_unreadable(), 2);
        assert_eq!(spool.len(), 2);
        // New records go to a new segment and are read after the intact ones.
        append(&mut spool, 5, 100);
        assert_eq!(segment_files(&settings.dir).len(), 2);
        assert_eq!(spool.read_after(2).map(|r| r.0), Some(5));
        spool.acknowledge(2);
        assert_eq!(segment_files(&settings.dir).len(), 1);
        assert_eq!(spool.oldest(), Some(5));
    }

    #[test]
    fn acknowledgement_deletes_whole_segments() {
        let dir = TempDir::new("ack");
        // 64 KiB spool: 4 KiB segments, so 1000-byte records fill a segment every 4 records.
        let settings = settings(&dir, 64 << 10);
        let mut spool = Spool::open(&settings, "run").unwrap();
        for sequence in 1..=10 {
            append(&mut spool, sequence, 1000);
        }
        assert_eq!(segment_files(&settings.dir).len(), 3);
        assert_eq!(spool.bytes(), disk_bytes(&settings.dir));
        spool.acknowledge(3);
        assert_eq!(
            segment_files(&settings.dir).len(),
            3,
            "segment 1 still holds 4"
        );
        assert_eq!(spool.len(), 7);
        assert_eq!(spool.read_after(0).map(|r| r.0), Some(4));
        spool.acknowledge(4);
        assert_eq!(segment_files(&settings.dir).len(), 2);
        assert_eq!(spool.bytes(), disk_bytes(&settings.dir));
        spool.acknowledge(10);
        assert!(spool.is_empty());
        assert!(segment_files(&settings.dir).is_empty());
        assert_eq!(spool.bytes(), 0);
        // Appending goes on in a new segment.
        append(&mut spool, 11, 1000);
        assert_eq!(spool.read_after(10).map(|r| r.0), Some(11));
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segment() {
        let dir = TempDir::new("full");
        let settings = settings(&dir, 64 << 10);
        let mut spool = Spool::open(&settings, "run").unwrap();
        let mut evicted = Evicted::default();
        let mut carried = Vec::new();
        for sequence in 1..=100 {
            let (e, c) = append(&mut spool, sequence, 1000);
            evicted.reports += e.reports;
            evicted.last_sequence = evicted.last_sequence.max(e.last_sequence);
            carried.extend(c);
            assert!(disk_bytes(&settings.dir) <= settings.max_bytes);
            assert_eq!(spool.bytes(), disk_bytes(&settings.dir));
        }
        assert_eq!(evicted.reports + spool.len(), 100);
        assert_eq!(carried.len() as u64, evicted.reports);
        assert_eq!(carried[0], payload(1, 1000), "oldest first");
        let oldest = spool.oldest().unwrap();
        assert_eq!(evicted.last_sequence + 1, oldest);
        assert!(spool.len() >= 50, "{} kept", spool.len());

        // Dropping one record at a time (count bound, refused reports).
        let mut dropped = Vec::new();
        assert_eq!(
            spool.drop_oldest(&mut |p| dropped.push(p.to_vec())),
            Some(oldest)
        );
        assert_eq!(dropped, [payload(oldest, 1000)]);
        assert_eq!(spool.oldest(), Some(oldest + 1));
        assert_eq!(spool.read_after(0).map(|r| r.0), Some(oldest + 1));

        // A report too large for the spool is refused, and the spool is unchanged.
        let mut e = Evicted::default();
        assert!(
            spool
                .append(101, &vec![0; 70 << 10], &mut e, &mut |_| {})
                .is_err()
        );
        assert_eq!(e, Evicted::default());
    }

    #[test]
    fn a_spool_directory_serves_one_agent_and_forgets_earlier_runs() {
        let dir = TempDir::new("lock");
        let settings = settings(&dir, 1 << 20);
        let mut first = Spool::open(&settings, "first").unwrap();
        append(&mut first, 1, 10);
        let error = Spool::open(&settings, "second").unwrap_err();
        assert!(
            error.to_string().contains("another sockfleet-agent"),
            "{error}"
        );
        fs::write(settings.dir.join("notes.txt"), "not ours").unwrap();
        drop(first);
        let second = Spool::open(&settings, "second").unwrap();
        assert!(second.is_empty());
        assert!(segment_files(&settings.dir).is_empty());
        assert!(
            settings.dir.join("notes.txt").exists(),
            "other files are left alone"
        );
        assert!(
            Spool::open(
                &SpoolSettings {
                    max_bytes: 1000,
                    ..settings.clone()
                },
                "x"
            )
            .is_err()
        );
        assert!(Spool::open(&settings, "../x").is_err());
    }
}

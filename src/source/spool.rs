//! A bounded spool on disk between the download and the restore: the download writes ahead of
//! the restore up to a budget, then waits; what the restore has read is deleted at once.
//!
//! The bytes live in segment files of a few MiB in the spool's directory. The writer (an
//! async task fed by the network) only ever appends to the newest segment; the reader (a
//! blocking thread: gunzip, untar, pg_restore's stdin) reads the oldest and deletes it once
//! past its end. So the spool holds at most `cap` bytes plus one network chunk, whatever the
//! backup's size.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

struct Segment {
    path: PathBuf,
    len: u64,
}

#[derive(Default)]
struct State {
    segments: VecDeque<Segment>,
    /// Bytes in the segment files.
    on_disk: u64,
    /// Set once the writer is done: `Err` says why the stream is cut.
    ended: Option<Result<(), String>>,
    /// The reader is gone: the writer stops.
    reader_gone: bool,
    next_id: u64,
}

struct Shared {
    dir: PathBuf,
    cap: u64,
    segment: u64,
    state: Mutex<State>,
    /// Wakes the reader (more bytes, or the end).
    more: Condvar,
    /// Wakes the writer (room).
    room: tokio::sync::Notify,
    /// The most bytes the spool held at once.
    high_water: AtomicU64,
}

/// Creates a spool in `dir` (made, and emptied) holding at most `cap` bytes.
pub fn spool(dir: &Path, cap: u64) -> io::Result<(SpoolWriter, SpoolReader)> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let segment = (cap / 4).clamp(1 << 20, 8 << 20);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        cap: cap.max(segment),
        segment,
        state: Mutex::new(State::default()),
        more: Condvar::new(),
        room: tokio::sync::Notify::new(),
        high_water: AtomicU64::new(0),
    });
    Ok((
        SpoolWriter {
            shared: shared.clone(),
            file: None,
        },
        SpoolReader {
            shared,
            file: None,
            pos: 0,
        },
    ))
}

/// The download's end of the spool.
pub struct SpoolWriter {
    shared: Arc<Shared>,
    file: Option<File>,
}

impl SpoolWriter {
    /// Appends `bytes`, waiting while the spool is full. `Err(BrokenPipe)` once the reader
    /// is gone.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        loop {
            let notified = self.shared.room.notified();
            {
                let st = self.shared.state.lock().expect("spool lock");
                if st.reader_gone {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the restore stopped reading",
                    ));
                }
                if st.on_disk == 0 || st.on_disk + bytes.len() as u64 <= self.shared.cap {
                    break;
                }
            }
            // The reader frees room as it goes; the timeout only guards a missed wake-up.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
        let mut st = self.shared.state.lock().expect("spool lock");
        let need_new = match st.segments.back() {
            Some(last) => last.len >= self.shared.segment || self.file.is_none(),
            None => true,
        };
        if need_new {
            let path = self.shared.dir.join(format!("segment-{:06}", st.next_id));
            st.next_id += 1;
            self.file = Some(File::create(&path)?);
            st.segments.push_back(Segment { path, len: 0 });
        }
        // Small writes under the lock: the reader only reads lengths under it, and a write
        // to the page cache takes microseconds.
        self.file.as_mut().expect("opened").write_all(bytes)?;
        let last = st.segments.back_mut().expect("a segment");
        last.len += bytes.len() as u64;
        st.on_disk += bytes.len() as u64;
        self.shared
            .high_water
            .fetch_max(st.on_disk, Ordering::Relaxed);
        drop(st);
        self.shared.more.notify_all();
        Ok(())
    }

    /// The stream is over: `Ok` at its end, `Err(why)` when it is cut.
    pub fn end(self, result: Result<(), String>) {
        let mut st = self.shared.state.lock().expect("spool lock");
        st.ended = Some(result);
        drop(st);
        self.shared.more.notify_all();
    }

    /// The most bytes the spool held at once so far.
    pub fn high_water(&self) -> u64 {
        self.shared.high_water.load(Ordering::Relaxed)
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // A writer dropped without `end` (its task aborted) cuts the stream.
        let mut st = self.shared.state.lock().expect("spool lock");
        if st.ended.is_none() {
            st.ended = Some(Err("the download stopped".into()));
        }
        drop(st);
        self.shared.more.notify_all();
    }
}

/// The restore's end of the spool: a blocking [`Read`].
pub struct SpoolReader {
    shared: Arc<Shared>,
    file: Option<File>,
    pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = self.shared.state.lock().expect("spool lock");
        loop {
            let (front_len, front_path, more_after) = match st.segments.front() {
                Some(s) => (s.len, s.path.clone(), st.segments.len() > 1),
                None => (0, PathBuf::new(), false),
            };
            if !front_path.as_os_str().is_empty() && self.pos < front_len {
                let want = buf.len().min((front_len - self.pos) as usize);
                drop(st);
                if self.file.is_none() {
                    let mut f = File::open(&front_path)?;
                    f.seek(SeekFrom::Start(self.pos))?;
                    self.file = Some(f);
                }
                let n = self.file.as_mut().expect("opened").read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a spool segment is shorter than written",
                    ));
                }
                self.pos += n as u64;
                return Ok(n);
            }
            // The front segment is read: delete it once the writer moved past it.
            if !front_path.as_os_str().is_empty() && (more_after || st.ended.is_some()) {
                st.segments.pop_front();
                st.on_disk -= front_len;
                let _ = fs::remove_file(&front_path);
                self.file = None;
                self.pos = 0;
                self.shared.room.notify_one();
                continue;
            }
            match &st.ended {
                Some(Ok(())) if st.segments.is_empty() => return Ok(0),
                Some(Err(why)) if st.segments.is_empty() => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why.clone()));
                }
                _ => {}
            }
            st = self
                .shared
                .more
                .wait_timeout(st, Duration::from_secs(1))
                .expect("spool lock")
                .0;
        }
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().expect("spool lock");
        st.reader_gone = true;
        for s in st.segments.drain(..) {
            let _ = fs::remove_file(&s.path);
        }
        st.on_disk = 0;
        drop(st);
        self.shared.room.notify_one();
        let _ = fs::remove_dir(&self.shared.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What goes in comes out, in order, while the spool never holds more than its cap (plus
    /// one write).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_pass_in_order_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 2 << 20;
        let (mut w, mut r) = spool(&dir.path().join("spool"), cap).unwrap();
        let total: usize = 20 << 20;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 100_000];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                // A slow reader: the writer must wait.
                std::thread::sleep(Duration::from_micros(200));
            }
            got
        });
        let chunk: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < total {
            w.write(&chunk).await.unwrap();
            sent += chunk.len();
        }
        let high = w.high_water();
        w.end(Ok(()));
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got.chunks(65_536).all(|c| c == &chunk[..]));
        assert!(
            high <= cap + chunk.len() as u64,
            "the spool held {high} bytes, cap {cap}"
        );
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .all(|e| e.file_name() != "spool"),
            "the spool's directory is removed with its reader"
        );
    }

    #[tokio::test]
    async fn a_cut_stream_is_an_error_for_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = spool(&dir.path().join("s"), 1 << 20).unwrap();
        w.write(b"abc").await.unwrap();
        w.end(Err("connection reset".into()));
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(out, b"abc");
        assert!(err.to_string().contains("connection reset"), "{err}");
    }
}

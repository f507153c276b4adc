//! A redb storage backend that reads a file and never writes it: [`Store::open_read_only`].
//!
//! redb writes even when it only opens a file (it marks the header as in use, repairs a file
//! that was not closed cleanly, and the store itself creates missing tables and converts older
//! layouts). Here every write lands in memory, page by page, on top of the file, and is
//! forgotten when the store is dropped: what is read is what the broker would see after opening
//! the file, and the file is left as it was.
//!
//! [`Store::open_read_only`]: crate::Store::open_read_only

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::{Mutex, MutexGuard};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Granularity of the in-memory copy of written bytes.
const PAGE: u64 = 4096;

/// See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct ReadOnlyBackend {
    /// The file, locked as redb locks it (so a broker holding the store is found out).
    file: FileBackend,
    state: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length the database believes the file has.
    len: u64,
    /// Bytes of the file below this offset are still the file's; above it, zeros unless
    /// written (the database shrank the file at some point).
    file_valid: u64,
    /// Written pages, by index.
    pages: BTreeMap<u64, Vec<u8>>,
}

impl ReadOnlyBackend {
    /// Locks `file` (opened for reading) as redb does; `DatabaseAlreadyOpen` if another process
    /// (a running broker) holds it.
    pub(crate) fn new(file: File) -> Result<Self, redb::DatabaseError> {
        let len = file.metadata()?.len();
        let file = FileBackend::new(file)?;
        Ok(Self {
            file,
            state: Mutex::new(Overlay { len, file_valid: len, pages: BTreeMap::new() }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Overlay> {
        // Nothing here panics while holding the lock with the state half changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Page `index` as the database sees it: written, or the file's bytes (zeros past them).
    fn page(&self, st: &Overlay, index: u64) -> io::Result<Vec<u8>> {
        if let Some(p) = st.pages.get(&index) {
            return Ok(p.clone());
        }
        let start = index * PAGE;
        let mut page = vec![0u8; PAGE as usize];
        let readable = st.file_valid.saturating_sub(start).min(PAGE);
        if readable > 0 {
            // `readable` is at most PAGE, which fits a usize.
            let bytes = self.file.read(start, readable as usize)?;
            page[..bytes.len()].copy_from_slice(&bytes);
        }
        Ok(page)
    }
}

impl StorageBackend for ReadOnlyBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let mut out = Vec::with_capacity(len);
        let end = offset + len as u64;
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = ((PAGE - at % PAGE).min(end - at)) as usize;
            let page = self.page(&st, index)?;
            out.extend_from_slice(&page[within..within + take]);
            at += take as u64;
        }
        Ok(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        if len < st.len {
            st.file_valid = st.file_valid.min(len);
            // Bytes past the new end read as zeros if the file grows again.
            let first_gone = len.div_ceil(PAGE);
            st.pages.retain(|&i, _| i < first_gone);
            if !len.is_multiple_of(PAGE)
                && let Some(p) = st.pages.get_mut(&(len / PAGE))
            {
                p[(len % PAGE) as usize..].fill(0);
            }
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = ((PAGE - at % PAGE).min(end - at)) as usize;
            let mut page = self.page(&st, index)?;
            let from = (at - offset) as usize;
            page[within..within + take].copy_from_slice(&data[from..from + take]);
            st.pages.insert(index, page);
            at += take as u64;
        }
        st.len = st.len.max(end);
        Ok(())
    }
}

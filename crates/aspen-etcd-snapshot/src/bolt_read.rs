//! A read-only reader of bbolt's file format.
//!
//! A bbolt file is an array of pages of one size. Pages 0 and 1 hold the meta (magic, version,
//! page size, the root bucket, the freelist page, the high-water page id, the transaction id
//! and an FNV-1a checksum); the valid one with the higher transaction id is current. Every
//! other page starts with a 16-byte header (id, flags, element count, overflow pages); branch
//! pages hold (key, child page) elements, leaf pages (flags, key, value) elements, and a leaf
//! element with the bucket flag is a nested bucket: its value is (root page, sequence), and
//! with root page 0 the bucket's single leaf page follows inline in the value. A page with
//! overflow continues over the next pages.
//!
//! Every offset read from the file is checked against the page and the file, keys must be in
//! strictly increasing order, no page is visited twice and trees have a bounded depth: a
//! damaged file is an error, never a panic or a loop.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::int::usize_from;
use crate::limits::{
    KEY_BYTES_MAX, PAGE_SPAN_BYTES_MAX, READ_PAGE_SIZE_BYTES_MAX, READ_PAGE_SIZE_BYTES_MIN,
    TREE_DEPTH_MAX,
};

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
pub const PAGE_HEADER_BYTES: usize = 16;
pub const ELEMENT_BYTES: usize = 16;
/// Bytes of a bucket's value before an inline page: root page id and sequence.
pub const BUCKET_HEADER_BYTES: usize = 16;
pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;
/// A leaf element that is a nested bucket.
pub const ELEMENT_BUCKET: u32 = 0x01;
/// Bytes of the meta fields the checksum covers (everything before it).
pub const META_CHECKSUMMED_BYTES: usize = 56;
pub const META_BYTES: usize = 64;

/// FNV-1a, 64 bits: bbolt's meta checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub root_page: u64,
    pub freelist_page: u64,
    /// Pages in use: the high-water mark.
    pub pages: u64,
    pub txid: u64,
}

/// Parses a meta (the bytes after a meta page's header); `None` if it is not a valid one.
fn parse_meta(bytes: &[u8]) -> Option<Meta> {
    if bytes.len() < META_BYTES
        || u32_at(bytes, 0) != MAGIC
        || u32_at(bytes, 4) != VERSION
        || fnv1a64(&bytes[..META_CHECKSUMMED_BYTES]) != u64_at(bytes, 56)
    {
        return None;
    }
    Some(Meta {
        page_size: u32_at(bytes, 8),
        root_page: u64_at(bytes, 16),
        freelist_page: u64_at(bytes, 32),
        pages: u64_at(bytes, 40),
        txid: u64_at(bytes, 48),
    })
}

/// Where a bucket's tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    Page(u64),
    /// A bucket small enough to live inside its parent: the bytes of its one leaf page.
    Inline(Vec<u8>),
}

/// One page with its overflow, read and checked.
struct Page {
    bytes: Vec<u8>,
    flags: u16,
    count: usize,
}

pub struct BoltReader {
    file: File,
    path: PathBuf,
    /// Bytes of the database (without a trailer).
    db_bytes: u64,
    meta: Meta,
}

impl BoltReader {
    /// Opens the first `db_bytes` of `file` as a bbolt database: finds the current meta and
    /// checks that the file holds every page it names.
    pub fn open(file: File, path: &Path, db_bytes: u64) -> Result<BoltReader> {
        let foreign = || Error::Foreign(path.to_path_buf());
        let first = read_at(&file, path, 0, PAGE_HEADER_BYTES + META_BYTES, db_bytes)
            .map_err(|_| foreign())?;
        let meta0 = (u16_at(&first, 8) == FLAG_META)
            .then(|| parse_meta(&first[PAGE_HEADER_BYTES..]))
            .flatten()
            .filter(|m| page_size_ok(m.page_size));
        // Without a valid first meta, bbolt looks for the second at the OS page size.
        let second_at = u64::from(meta0.map_or(4096, |m| m.page_size));
        let meta1 = read_at(
            &file,
            path,
            second_at,
            PAGE_HEADER_BYTES + META_BYTES,
            db_bytes,
        )
        .ok()
        .filter(|page| u16_at(page, 8) == FLAG_META)
        .and_then(|page| parse_meta(&page[PAGE_HEADER_BYTES..]))
        .filter(|m| u64::from(m.page_size) == second_at);
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => return Err(foreign()),
        };
        let reader = BoltReader {
            file,
            path: path.to_path_buf(),
            db_bytes,
            meta,
        };
        let needed = meta.pages.checked_mul(u64::from(meta.page_size));
        match needed {
            Some(needed) if needed <= db_bytes => {}
            Some(needed) => {
                return Err(Error::Truncated {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the database has {} pages of {} bytes ({needed} bytes), the file only {db_bytes}",
                        meta.pages, meta.page_size
                    ),
                });
            }
            None => return Err(reader.corrupt("the page count overflows")),
        }
        if meta.pages < 3 || meta.root_page < 2 || meta.root_page >= meta.pages {
            return Err(reader.corrupt(format!(
                "the meta names root page {} of {} pages",
                meta.root_page, meta.pages
            )));
        }
        Ok(reader)
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root(&self) -> Bucket {
        Bucket::Page(self.meta.root_page)
    }

    pub fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The nested bucket `name` of `parent`, if it has one.
    pub fn bucket(&self, parent: &Bucket, name: &[u8]) -> Result<Option<Bucket>> {
        let mut found = None;
        self.for_each(parent, |key, value, is_bucket| -> Result<()> {
            if key == name {
                if !is_bucket {
                    return Err(self.corrupt(format!(
                        "{} is a value, not a bucket",
                        String::from_utf8_lossy(name)
                    )));
                }
                found = Some(self.bucket_of(value)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Reads a bucket element's value: a root page, or an inline page.
    pub fn bucket_of(&self, value: &[u8]) -> Result<Bucket> {
        if value.len() < BUCKET_HEADER_BYTES {
            return Err(self.corrupt("a bucket value shorter than its header"));
        }
        let root = u64_at(value, 0);
        if root != 0 {
            return Ok(Bucket::Page(root));
        }
        Ok(Bucket::Inline(value[BUCKET_HEADER_BYTES..].to_vec()))
    }

    /// Calls `visit(key, value, is_bucket)` for every element of `bucket`, in key order; the
    /// first error (the file's or the visitor's) stops the walk.
    pub fn for_each<E: From<Error>>(
        &self,
        bucket: &Bucket,
        mut visit: impl FnMut(&[u8], &[u8], bool) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let first = match bucket {
            Bucket::Page(id) => self.read_page(*id)?,
            Bucket::Inline(bytes) => self.check_page(bytes.clone(), None)?,
        };
        if first.flags == FLAG_BRANCH && matches!(bucket, Bucket::Inline(_)) {
            return Err(self.corrupt("an inline bucket holds a branch page").into());
        }
        // An explicit stack (no recursion over the file's depth): (page, next element).
        let mut stack: Vec<(Page, usize)> = vec![(first, 0)];
        let mut pages_visited: u64 = 1;
        let mut last_key: Option<Vec<u8>> = None;
        while let Some((page, next)) = stack.last_mut() {
            if *next == page.count {
                stack.pop();
                continue;
            }
            let index = *next;
            *next += 1;
            if page.flags == FLAG_LEAF {
                let (flags, key, value) = self.leaf_element(page, index)?;
                if last_key.as_deref().is_some_and(|last| last >= key) {
                    return Err(self.corrupt("keys out of order").into());
                }
                visit(key, value, flags & ELEMENT_BUCKET != 0)?;
                let last = last_key.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(key);
                continue;
            }
            let child = self.branch_child(page, index)?;
            pages_visited += 1;
            if pages_visited > self.meta.pages {
                return Err(self.corrupt("a page is referenced more than once").into());
            }
            if stack.len() >= TREE_DEPTH_MAX {
                return Err(self
                    .corrupt(format!("a tree deeper than {TREE_DEPTH_MAX} levels"))
                    .into());
            }
            let child = self.read_page(child)?;
            stack.push((child, 0));
        }
        Ok(())
    }

    fn leaf_element<'p>(&self, page: &'p Page, index: usize) -> Result<(u32, &'p [u8], &'p [u8])> {
        let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
        let bytes = &page.bytes;
        let flags = u32_at(bytes, at);
        let pos = u64::from(u32_at(bytes, at + 4));
        let key_bytes = u64::from(u32_at(bytes, at + 8));
        let value_bytes = u64::from(u32_at(bytes, at + 12));
        let key_start = at as u64 + pos;
        let value_start = key_start + key_bytes;
        let end = value_start + value_bytes;
        if end > bytes.len() as u64 || usize_from(key_bytes) > KEY_BYTES_MAX || key_bytes == 0 {
            return Err(self.corrupt(format!(
                "leaf element {index} ({key_bytes}-byte key, {value_bytes}-byte value) does not fit its page"
            )));
        }
        Ok((
            flags,
            &bytes[usize_from(key_start)..usize_from(value_start)],
            &bytes[usize_from(value_start)..usize_from(end)],
        ))
    }

    fn branch_child(&self, page: &Page, index: usize) -> Result<u64> {
        let at = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
        let pos = u64::from(u32_at(&page.bytes, at));
        let key_bytes = u64::from(u32_at(&page.bytes, at + 4));
        if at as u64 + pos + key_bytes > page.bytes.len() as u64 {
            return Err(self.corrupt(format!("branch element {index} does not fit its page")));
        }
        Ok(u64_at(&page.bytes, at + 8))
    }

    /// Reads page `id` and its overflow, checking its header.
    fn read_page(&self, id: u64) -> Result<Page> {
        if id < 2 || id >= self.meta.pages {
            return Err(self.corrupt(format!(
                "a reference to page {id}, outside the database's {} pages",
                self.meta.pages
            )));
        }
        let page_size = u64::from(self.meta.page_size);
        let offset = id * page_size;
        let header = read_at(
            &self.file,
            &self.path,
            offset,
            PAGE_HEADER_BYTES,
            self.db_bytes,
        )?;
        let overflow = u64::from(u32_at(&header, 12));
        let span_pages = overflow + 1;
        if id + span_pages > self.meta.pages || span_pages * page_size > PAGE_SPAN_BYTES_MAX {
            return Err(self.corrupt(format!(
                "page {id} claims {overflow} overflow pages, past the end of the database"
            )));
        }
        let bytes = read_at(
            &self.file,
            &self.path,
            offset,
            usize_from(span_pages * page_size),
            self.db_bytes,
        )?;
        self.check_page(bytes, Some(id))
    }

    /// Checks a page's header: its id (not for inline pages), its kind, and that its element
    /// array fits.
    fn check_page(&self, bytes: Vec<u8>, id: Option<u64>) -> Result<Page> {
        if bytes.len() < PAGE_HEADER_BYTES {
            return Err(self.corrupt("an inline bucket shorter than a page header"));
        }
        let what = id.map_or_else(|| "an inline page".to_string(), |id| format!("page {id}"));
        if let Some(id) = id
            && u64_at(&bytes, 0) != id
        {
            return Err(self.corrupt(format!("{what} has id {} in its header", u64_at(&bytes, 0))));
        }
        let flags = u16_at(&bytes, 8);
        if flags != FLAG_BRANCH && flags != FLAG_LEAF {
            return Err(self.corrupt(format!(
                "{what} has flags {flags:#x}, neither a branch nor a leaf page"
            )));
        }
        let count = usize::from(u16_at(&bytes, 10));
        if PAGE_HEADER_BYTES + count * ELEMENT_BYTES > bytes.len() {
            return Err(self.corrupt(format!("{what}: {count} elements do not fit")));
        }
        if flags == FLAG_BRANCH && count == 0 {
            return Err(self.corrupt(format!("{what}: an empty branch page")));
        }
        Ok(Page {
            bytes,
            flags,
            count,
        })
    }
}

fn page_size_ok(page_size: u32) -> bool {
    page_size.is_power_of_two()
        && (READ_PAGE_SIZE_BYTES_MIN..=READ_PAGE_SIZE_BYTES_MAX).contains(&page_size)
}

/// Reads `len` bytes at `offset`; reading past `db_bytes` is a truncated file.
fn read_at(file: &File, path: &Path, offset: u64, len: usize, db_bytes: u64) -> Result<Vec<u8>> {
    if offset + len as u64 > db_bytes {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            reason: format!(
                "bytes {offset}..{} are past the end ({db_bytes})",
                offset + len as u64
            ),
        });
    }
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

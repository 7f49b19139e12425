//! Writes a bbolt database in one pass, page by page, from keys given in increasing order.
//!
//! Each bucket's B+tree is built bottom-up while its keys arrive: a leaf page is written as
//! soon as the next element would not fit, and its first key and page id go up into the open
//! branch page of the level above, which is written when full in turn. Memory is one open page
//! per level, whatever the data size. Pages get ids in the order they are written, from 2 on;
//! at the end the root bucket's page, an empty freelist page and then both meta pages (which
//! must be pages 0 and 1, so the sink must seek) are written. The result has no free or
//! unreachable page, which `bbolt check` (run by `etcdctl snapshot status`) requires.

use std::io::{Seek, SeekFrom, Write};

use crate::bolt_read::{
    BUCKET_HEADER_BYTES, ELEMENT_BUCKET, ELEMENT_BYTES, FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF,
    FLAG_META, MAGIC, META_CHECKSUMMED_BYTES, PAGE_HEADER_BYTES, VERSION, fnv1a64,
};
use crate::error::{Error, Result};
use crate::int::{u32_field, usize_from};
use crate::limits::{KEY_BYTES_MAX, WRITE_PAGE_SIZE_BYTES};

/// The first page id after the two meta pages.
const FIRST_DATA_PAGE: u64 = 2;

/// An open page of one tree level: its elements, encoded, waiting to be written.
#[derive(Default)]
struct OpenPage {
    /// (flags, key, value) for a leaf; (0, key, child page id as 8 bytes) for a branch.
    elements: Vec<(u32, Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

impl OpenPage {
    fn new() -> OpenPage {
        OpenPage {
            elements: Vec::new(),
            bytes: PAGE_HEADER_BYTES,
        }
    }
}

/// A bucket's tree being built; finish it with [`BoltWriter::finish_bucket`].
pub struct TreeBuilder {
    /// Level 0 is the leaf level.
    levels: Vec<OpenPage>,
    /// Pages written per level so far.
    written: Vec<u64>,
    last_key: Option<Vec<u8>>,
    elements: u64,
}

/// Where a finished bucket is, as its parent's value.
pub struct BucketValue(pub Vec<u8>);

pub struct BoltWriter<W: Write + Seek> {
    sink: W,
    page_size: usize,
    next_page: u64,
    page: Vec<u8>,
}

impl<W: Write + Seek> BoltWriter<W> {
    /// Starts a database at the sink's position 0: the meta pages' places are zero-filled
    /// now (so the sink has no hole) and written last.
    pub fn new(mut sink: W) -> Result<BoltWriter<W>> {
        let page_size = WRITE_PAGE_SIZE_BYTES as usize;
        sink.write_all(&vec![0u8; usize_from(FIRST_DATA_PAGE) * page_size])
            .map_err(Error::Write)?;
        Ok(BoltWriter {
            sink,
            page_size,
            next_page: FIRST_DATA_PAGE,
            page: Vec::with_capacity(page_size),
        })
    }

    pub fn begin_bucket(&self) -> TreeBuilder {
        TreeBuilder {
            levels: vec![OpenPage::new()],
            written: vec![0],
            last_key: None,
            elements: 0,
        }
    }

    /// Adds a key and value; keys must come in strictly increasing order.
    pub fn put(&mut self, tree: &mut TreeBuilder, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_element(tree, 0, key, value)
    }

    /// Adds a nested bucket (from [`finish_bucket`](Self::finish_bucket)) under `name`.
    pub fn put_bucket(
        &mut self,
        tree: &mut TreeBuilder,
        name: &[u8],
        bucket: &BucketValue,
    ) -> Result<()> {
        self.put_element(tree, ELEMENT_BUCKET, name, &bucket.0)
    }

    fn put_element(
        &mut self,
        tree: &mut TreeBuilder,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        assert!(
            !key.is_empty() && key.len() <= KEY_BYTES_MAX,
            "bbolt key of {} bytes",
            key.len()
        );
        assert!(
            tree.last_key.as_deref().is_none_or(|last| last < key),
            "bbolt keys must be written in increasing order"
        );
        tree.last_key = Some(key.to_vec());
        tree.elements += 1;
        self.add(tree, 0, flags, key.to_vec(), value.to_vec())
    }

    /// Adds an element to `level`'s open page, writing the page first if it would not fit.
    fn add(
        &mut self,
        tree: &mut TreeBuilder,
        level: usize,
        flags: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<()> {
        let element_bytes = ELEMENT_BYTES + key.len() + value.len();
        let open = &tree.levels[level];
        if !open.elements.is_empty() && open.bytes + element_bytes > self.page_size {
            self.write_level(tree, level)?;
        }
        let open = &mut tree.levels[level];
        open.bytes += element_bytes;
        open.elements.push((flags, key, value));
        Ok(())
    }

    /// Writes `level`'s open page and adds a reference to it to the level above.
    fn write_level(&mut self, tree: &mut TreeBuilder, level: usize) -> Result<()> {
        let open = std::mem::replace(&mut tree.levels[level], OpenPage::new());
        let first_key = open
            .elements
            .first()
            .map(|e| e.1.clone())
            .unwrap_or_default();
        let id = self.write_node(&open, level > 0)?;
        tree.written[level] += 1;
        if tree.levels.len() == level + 1 {
            tree.levels.push(OpenPage::new());
            tree.written.push(0);
        }
        self.add(tree, level + 1, 0, first_key, id.to_le_bytes().to_vec())
    }

    /// Ends a bucket's tree: writes what is open, bottom-up, and returns the bucket's value.
    /// An empty bucket is stored inline, as bbolt stores one.
    pub fn finish_bucket(&mut self, mut tree: TreeBuilder) -> Result<BucketValue> {
        if tree.elements == 0 {
            let mut value = vec![0u8; BUCKET_HEADER_BYTES + PAGE_HEADER_BYTES];
            value[BUCKET_HEADER_BYTES + 8..BUCKET_HEADER_BYTES + 10]
                .copy_from_slice(&FLAG_LEAF.to_le_bytes());
            return Ok(BucketValue(value));
        }
        let mut level = 0;
        let root = loop {
            let is_top = level + 1 == tree.levels.len();
            let open = &tree.levels[level];
            if is_top && tree.written[level] == 0 {
                // The top level's only page: the root.
                let open = std::mem::replace(&mut tree.levels[level], OpenPage::new());
                break self.write_node(&open, level > 0)?;
            }
            if !open.elements.is_empty() {
                self.write_level(&mut tree, level)?;
            }
            level += 1;
        };
        let mut value = vec![0u8; BUCKET_HEADER_BYTES];
        value[..8].copy_from_slice(&root.to_le_bytes());
        Ok(BucketValue(value))
    }

    /// Serializes one node into a page (with overflow pages if it is larger) and writes it.
    fn write_node(&mut self, node: &OpenPage, branch: bool) -> Result<u64> {
        let id = self.next_page;
        let count = node.elements.len();
        assert!(count <= usize::from(u16::MAX), "a page of {count} elements");
        let span_pages = node.bytes.div_ceil(self.page_size).max(1);
        self.page.clear();
        self.page.resize(span_pages * self.page_size, 0);
        let flags = if branch { FLAG_BRANCH } else { FLAG_LEAF };
        write_header(
            &mut self.page,
            id,
            flags,
            u16::try_from(count).unwrap_or(u16::MAX), // asserted above: count <= u16::MAX
            u32_field(span_pages - 1, "a node's overflow page count"),
        );
        let mut data_at = PAGE_HEADER_BYTES + count * ELEMENT_BYTES;
        for (i, (element_flags, key, value)) in node.elements.iter().enumerate() {
            let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let pos = u32_field(data_at - at, "an element's offset");
            if branch {
                self.page[at..at + 4].copy_from_slice(&pos.to_le_bytes());
                self.page[at + 4..at + 8]
                    .copy_from_slice(&u32_field(key.len(), "a key's length").to_le_bytes());
                self.page[at + 8..at + 16].copy_from_slice(value);
            } else {
                self.page[at..at + 4].copy_from_slice(&element_flags.to_le_bytes());
                self.page[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                self.page[at + 8..at + 12]
                    .copy_from_slice(&u32_field(key.len(), "a key's length").to_le_bytes());
                self.page[at + 12..at + 16]
                    .copy_from_slice(&u32_field(value.len(), "a value's length").to_le_bytes());
            }
            self.page[data_at..data_at + key.len()].copy_from_slice(key);
            data_at += key.len();
            if !branch {
                self.page[data_at..data_at + value.len()].copy_from_slice(value);
                data_at += value.len();
            }
        }
        debug_assert!(data_at <= self.page.len());
        self.sink.write_all(&self.page).map_err(Error::Write)?;
        self.next_page += span_pages as u64;
        Ok(id)
    }

    /// Writes the root bucket (its elements: each top-level bucket, by name in increasing
    /// order), the freelist and the metas; returns the sink and the database's size in bytes.
    pub fn finish(mut self, buckets: &[(&[u8], BucketValue)]) -> Result<(W, u64)> {
        let mut root = self.begin_bucket();
        for (name, value) in buckets {
            self.put_bucket(&mut root, name, value)?;
        }
        let root_value = self.finish_bucket(root)?;
        let mut root_page = [0u8; 8];
        root_page.copy_from_slice(&root_value.0[..8]);
        let root_page = u64::from_le_bytes(root_page);
        assert!(root_page >= FIRST_DATA_PAGE, "the root bucket has a page");
        let freelist_page = self.next_page;
        self.page.clear();
        self.page.resize(self.page_size, 0);
        write_header(&mut self.page, freelist_page, FLAG_FREELIST, 0, 0);
        self.sink.write_all(&self.page).map_err(Error::Write)?;
        self.next_page += 1;
        let pages = self.next_page;
        self.sink.seek(SeekFrom::Start(0)).map_err(Error::Write)?;
        for id in 0..FIRST_DATA_PAGE {
            self.page.clear();
            self.page.resize(self.page_size, 0);
            write_header(&mut self.page, id, FLAG_META, 0, 0);
            let meta = &mut self.page[PAGE_HEADER_BYTES..];
            meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
            meta[8..12].copy_from_slice(&u32_field(self.page_size, "the page size").to_le_bytes());
            // flags (12..16) and the root bucket's sequence (24..32) stay zero.
            meta[16..24].copy_from_slice(&root_page.to_le_bytes());
            meta[32..40].copy_from_slice(&freelist_page.to_le_bytes());
            meta[40..48].copy_from_slice(&pages.to_le_bytes());
            // bbolt writes transaction t's meta to page t % 2: page `id` holds txid `id`.
            meta[48..56].copy_from_slice(&id.to_le_bytes());
            let checksum = fnv1a64(&meta[..META_CHECKSUMMED_BYTES]);
            meta[56..64].copy_from_slice(&checksum.to_le_bytes());
            self.sink.write_all(&self.page).map_err(Error::Write)?;
        }
        self.sink
            .seek(SeekFrom::Start(pages * self.page_size as u64))
            .map_err(Error::Write)?;
        self.sink.flush().map_err(Error::Write)?;
        Ok((self.sink, pages * self.page_size as u64))
    }
}

fn write_header(page: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

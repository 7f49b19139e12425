//! Every bound of the snapshot reader and writer, units last. This crate sits below
//! aspen-core (it depends on no Aspen crate), so its limits live here.

/// bbolt's page size for files we write (bbolt's default on Linux/x86-64).
pub const WRITE_PAGE_SIZE_BYTES: u32 = 4096;
/// Page sizes a file may declare: bbolt uses the OS page size, a power of two in this range.
pub const READ_PAGE_SIZE_BYTES_MIN: u32 = 512;
pub const READ_PAGE_SIZE_BYTES_MAX: u32 = 64 * 1024;
/// Deepest B+tree (buckets nested inside buckets count too) the reader walks. bbolt's trees
/// with 4 KiB pages are a handful of levels deep for any realistic size.
pub const TREE_DEPTH_MAX: usize = 32;
/// One page with its overflow pages (a node holding a large value): etcd's largest request is
/// far below this.
pub const PAGE_SPAN_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// bbolt's own key size limit.
pub const KEY_BYTES_MAX: usize = 32 * 1024;
/// Bytes read at a time when hashing a file.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;
/// `etcdctl snapshot save` appends a SHA-256 to a database whose size is a multiple of this
/// (etcd's test for "has a hash": `size % 512 == 32`).
pub const SAVED_ALIGN_BYTES: u64 = 512;
pub const SHA256_BYTES: u64 = 32;

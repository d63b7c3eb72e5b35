//! How the process asks glibc's allocator for memory.

/// Large buffers (a backup's 1 MiB blocks and chunks, zstd's job buffers)
/// are mapped on their own and unmapped when freed. glibc's default raises
/// this threshold to the largest block freed so far, after which such
/// buffers come from per-thread arenas and stay there: measured with
/// `bench-backup`, a process's RSS before a backup climbed by 15-20 MiB
/// with each backup it had run, `malloc_trim` after every job
/// notwithstanding (30 → 87 MiB over three). A fixed threshold keeps it
/// flat (about 36 MiB after four backups).
///
/// Call once, early in `main`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it takes no
    // pointers and may be called at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Twice glibc's starting value (so 256 KiB copy buffers stay in the
/// arenas); what the numbers above were measured with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

//! Reading the files a user or a prover hands us, and writing results, without surprises.
//!
//! # Inputs
//! Every file veritrace reads goes through [`open_regular`] or [`read_limited`]:
//!
//! * only **regular files** are read. The type is checked with `stat` *before* the file is opened
//!   (opening a FIFO for reading blocks until a writer appears) and again on the open handle,
//!   which is opened non-blocking on Unix, so a path swapped for a FIFO in between cannot block
//!   either. Directories, FIFOs, sockets and devices (`/dev/zero`, `/dev/stdin`, …) are refused
//!   with [`FileError::NotAFile`];
//! * the **size is checked before reading** against a limit that depends on what the file is
//!   (see the constants below), and the read itself stops one byte past the limit, so a file that
//!   grows while it is read cannot exhaust memory either.
//!
//! # Outputs
//! * [`write_atomic`]: one file, written into a uniquely named temporary file in the target's
//!   directory (the `tempfile` crate: no file of the user's is ever touched, `X.tmp` included),
//!   flushed to disk (`fsync`), renamed over the target, and the directory synced. An
//!   interrupted write leaves the old file intact.
//! * [`OutputDir`]: files that belong together (a run's trace and commitment, a simulation's
//!   report set, a round's openings) are written into a fresh staging directory beside the
//!   target, synced, and swapped into place in one step (`renameat2(RENAME_EXCHANGE)` on Linux,
//!   a plain `rename` when the target does not exist), so the set appears whole or not at all.
//!   An existing target directory is replaced only if everything in it is a file of that verb's
//!   own set ([`OutputDir::stage`] takes the rule); anything else in it is refused with
//!   [`FileError::Occupied`], so no user file is lost.
//! * [`refuse_same_file`]: an output path that names one of the verb's inputs is refused.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Largest JSON or TOML document read as text (configuration, scenario, policy, tolerance,
/// `config.json`, `tokenizer.json`, study plans): 64 MiB. The largest `tokenizer.json` of a
/// current open model is about 17 MB (Llama-3: 9 MB).
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Largest protocol message file (commitment, challenge, opening; JSON or binary) read by
/// default: the verifier's own default (`veritrace_protocol::VerifierLimits::DEFAULT`,
/// 8 GiB). An opening holds the opened cells (hex in JSON, twice their bytes); the verifier's
/// limit on opened bytes is what bounds an honest opening, this bounds the file. The
/// `VERITRACE_MAX_MESSAGE_BYTES` environment variable overrides it for the verbs without
/// `--limits` ([`max_message_bytes`]).
pub const MAX_MESSAGE_BYTES: u64 = veritrace_protocol::VerifierLimits::DEFAULT.max_message_bytes;

/// Largest safetensors JSON header parsed: 16 MiB (safetensors itself allows 100 MB; a trace's
/// header lists a few tensors and the statement, about 8 bytes per token: 16 MiB covers 2
/// million tokens). Checked from the header's 8-byte length field before any byte of it is
/// parsed. `VERITRACE_MAX_HEADER_BYTES` overrides it ([`max_header_bytes`]).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Every way an input file is refused or an output cannot be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be opened or read (missing, unreadable, not UTF-8 where text is
    /// expected).
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system (or the UTF-8 check) said.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO", "a character device", …).
        kind: &'static str,
    },
    /// The file is larger than the limit for what it is meant to hold.
    #[error(
        "{} is {size} bytes, more than the {limit}-byte limit for {what}{hint}",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or, for a file that grew while read, the limit plus one).
        size: u64,
        /// The limit.
        limit: u64,
        /// What the file was read as.
        what: &'static str,
        /// How to raise the limit, if it can be raised (with a leading "; ").
        hint: String,
    },
    /// An output directory holds something that is not part of the verb's own output set.
    #[error(
        "{} already holds {entries}, which this command does not write; give a new or empty \
         directory (nothing was written)",
        path.display()
    )]
    Occupied {
        /// The directory.
        path: PathBuf,
        /// The foreign entries (up to five, then a count).
        entries: String,
    },
    /// An output path names one of the command's inputs.
    #[error(
        "the output {} is the input {}: writing it would destroy the input (nothing was written)",
        output.display(),
        input.display()
    )]
    SameAsInput {
        /// The output path.
        output: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// Writing an output failed (disk full, permissions, …): not the input's fault.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    /// Whether the error is the input's (or the command line's) fault: exit code 2. Every
    /// variant is, except [`FileError::Write`].
    pub fn is_input(&self) -> bool {
        !matches!(self, FileError::Write { .. })
    }

    /// The reason without the path, for a caller whose own error names the file: the operating
    /// system's message for [`FileError::Read`], the whole message otherwise.
    pub fn reason(&self) -> String {
        match self {
            FileError::Read { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }

    /// As an I/O error: [`FileError::Read`]'s own, the message of any other.
    pub fn into_io(self) -> std::io::Error {
        match self {
            FileError::Read { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// A limit from an environment variable (a decimal byte count), or `default`.
fn env_limit(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default)
}

/// The message-file limit: `VERITRACE_MAX_MESSAGE_BYTES` if set to a byte count, else
/// [`MAX_MESSAGE_BYTES`].
pub fn max_message_bytes() -> u64 {
    env_limit("VERITRACE_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES)
}

/// The safetensors header limit: `VERITRACE_MAX_HEADER_BYTES` if set to a byte count, else
/// [`MAX_HEADER_BYTES`].
pub fn max_header_bytes() -> u64 {
    env_limit("VERITRACE_MAX_HEADER_BYTES", MAX_HEADER_BYTES)
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (following symbolic links); returns the
/// handle and the file's size. See the [module docs](self) for why a FIFO cannot block this.
///
/// # Errors
/// [`FileError::Read`] if it cannot be inspected or opened, [`FileError::NotAFile`] if it is
/// not a regular file.
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    let read = |source| FileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking only matters for a FIFO or device swapped in after the stat above; a
        // regular file's reads are unaffected.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(FileError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok((file, meta.len()))
}

/// Reads the regular file `path` whole, refusing it without reading if it is larger than
/// `limit` bytes. `what` names the file's role in the message ("a commitment", …) and `hint`
/// how to raise the limit (empty if it cannot be raised).
///
/// # Errors
/// As [`open_regular`], and [`FileError::TooLarge`].
pub fn read_limited(
    path: &Path,
    limit: u64,
    what: &'static str,
    hint: &str,
) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_limited(path, limit, what, hint)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, limit.saturating_add(1), limit, what, hint));
    }
    Ok(bytes)
}

/// [`read_limited`]'s checks without reading: the open regular file of at most `limit` bytes
/// and its size, for [`read_limited`], [`map_limited`] and a caller that reads the file as a
/// stream (an opening checked as it is read).
///
/// # Errors
/// As [`read_limited`].
pub fn open_limited(
    path: &Path,
    limit: u64,
    what: &'static str,
    hint: &str,
) -> Result<(File, u64), FileError> {
    let (file, size) = open_regular(path)?;
    if size > limit {
        return Err(too_large(path, size, limit, what, hint));
    }
    Ok((file, size))
}

/// [`read_limited`] without reading: the file mapped read-only (an empty file gives no bytes),
/// so that a large message costs file pages the kernel can drop instead of a heap copy. The same
/// checks: a regular file of at most `limit` bytes. As for every mapped file here (trace files
/// too), the file must not be changed while it is in use.
///
/// # Errors
/// As [`read_limited`].
pub fn map_limited(
    path: &Path,
    limit: u64,
    what: &'static str,
    hint: &str,
) -> Result<MappedFile, FileError> {
    let (file, size) = open_limited(path, limit, what, hint)?;
    if size == 0 {
        return Ok(MappedFile(None));
    }
    let map = crate::trace_file::map_file(&file).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if map.len() as u64 > limit {
        return Err(too_large(path, map.len() as u64, limit, what, hint));
    }
    Ok(MappedFile(Some(map)))
}

/// The [`FileError::TooLarge`] of [`read_limited`] and [`map_limited`].
fn too_large(path: &Path, size: u64, limit: u64, what: &'static str, hint: &str) -> FileError {
    FileError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        what,
        hint: if hint.is_empty() {
            String::new()
        } else {
            format!("; {hint}")
        },
    }
}

/// A file's bytes mapped read-only ([`map_limited`]).
#[derive(Debug)]
pub struct MappedFile(Option<memmap2::Mmap>);

impl std::ops::Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// [`read_limited`] for UTF-8 text.
///
/// # Errors
/// As [`read_limited`]; invalid UTF-8 is a [`FileError::Read`] of kind `InvalidData`.
pub fn read_text_limited(
    path: &Path,
    limit: u64,
    what: &'static str,
    hint: &str,
) -> Result<String, FileError> {
    let bytes = read_limited(path, limit, what, hint)?;
    String::from_utf8(bytes).map_err(|e| FileError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e})"),
        ),
    })
}

/// A text document (JSON, TOML) of at most [`MAX_TEXT_BYTES`].
///
/// # Errors
/// As [`read_text_limited`].
pub fn read_text(path: &Path, what: &'static str) -> Result<String, FileError> {
    read_text_limited(path, MAX_TEXT_BYTES, what, "")
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Syncs a directory, so that a rename into it is durable (ignored where directories cannot be
/// opened for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically (see the [module docs](self)): a unique temporary file
/// in the same directory, synced, made an ordinary 0644 file, renamed over `path`, directory
/// synced.
///
/// # Errors
/// [`FileError::Write`] if the directory cannot be written or the rename fails; the old file,
/// if any, is then unchanged and the temporary file removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] for a secret (a verifier key): the file is created readable by its owner
/// only (0600) and is never more readable at any moment, before or after the rename.
///
/// # Errors
/// As [`write_atomic`].
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Refuses an output path that exists and is not a regular file (or a symbolic link to one):
/// renaming a new file over `/dev/null`, a FIFO or a socket would replace the device itself with
/// a regular file, for every process on the machine.
///
/// # Errors
/// [`FileError::NotAFile`] naming what the path is.
pub fn check_output_file(path: &Path) -> Result<(), FileError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FileError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let meta = if meta.file_type().is_symlink() {
        match std::fs::metadata(path) {
            Ok(target) => target,
            // A dangling link: the rename replaces the link.
            Err(_) => return Ok(()),
        }
    } else {
        meta
    };
    if meta.is_file() {
        Ok(())
    } else {
        Err(FileError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        })
    }
}

/// A unique temporary file beside an output path, to be filled and then put in place in one
/// rename ([`TempOutput::persist`]): the single mechanism behind [`write_atomic`],
/// [`write_atomic_private`] and [`write_new`], and for writers that stream into a path of their
/// own (the trace writer). Dropped without a persist, it is removed.
#[derive(Debug)]
pub struct TempOutput {
    target: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl TempOutput {
    /// A temporary file (0600) in the directory of `target`, after [`check_output_file`].
    ///
    /// # Errors
    /// As [`check_output_file`], and [`FileError::Write`].
    pub fn beside(target: &Path) -> Result<Self, FileError> {
        check_output_file(target)?;
        let tmp = tempfile::Builder::new()
            .prefix(".veritrace-")
            .suffix(".tmp")
            .tempfile_in(dir_of(target))
            .map_err(|source| FileError::Write {
                path: target.to_path_buf(),
                source,
            })?;
        Ok(TempOutput {
            target: target.to_path_buf(),
            tmp,
        })
    }

    /// The temporary file's path (for a writer that opens it itself).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn failed(&self, source: std::io::Error) -> FileError {
        FileError::Write {
            path: self.target.clone(),
            source,
        }
    }

    /// Appends `bytes` to the temporary file.
    ///
    /// # Errors
    /// [`FileError::Write`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.tmp.write_all(bytes).map_err(|e| self.failed(e))
    }

    /// Gives the file `mode` (widening tempfile's 0600, never narrowing it), syncs it, and
    /// renames it onto the target — over an existing file, or with `replace = false` only where
    /// there is none ([`FileError::Occupied`] otherwise) — then syncs the directory.
    ///
    /// # Errors
    /// [`FileError::Write`], [`FileError::Occupied`]; the temporary file is then removed.
    pub fn persist(self, mode: u32, replace: bool) -> Result<(), FileError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.failed(e))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        File::open(self.tmp.path())
            .and_then(|f| f.sync_all())
            .map_err(|e| self.failed(e))?;
        let TempOutput { target, tmp } = self;
        let result = if replace {
            tmp.persist(&target).map(|_| ())
        } else {
            tmp.persist_noclobber(&target).map(|_| ())
        };
        match result {
            Ok(()) => {
                sync_dir(dir_of(&target));
                Ok(())
            }
            Err(e) if !replace && e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(FileError::Occupied {
                    path: target,
                    entries: "a file (this command never replaces one)".into(),
                })
            }
            Err(e) => Err(FileError::Write {
                path: target,
                source: e.error,
            }),
        }
    }
}

/// [`write_atomic`] of the bytes `fill` writes into a buffered writer of the temporary file, so
/// that large content is never held whole in memory. A `fill` error leaves the target
/// untouched (the temporary file is removed).
///
/// # Errors
/// [`FileError::Write`], with `fill`'s error as its source.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), FileError> {
    let mut tmp = TempOutput::beside(path)?;
    let written = {
        let mut w = std::io::BufWriter::new(tmp.tmp.as_file_mut());
        fill(&mut w).and_then(|()| w.flush())
    };
    written.map_err(|e| tmp.failed(e))?;
    tmp.persist(0o644, true)
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut tmp = TempOutput::beside(path)?;
    tmp.write(bytes)?;
    tmp.persist(mode, true)
}

/// As [`write_atomic`], but refuses to replace an existing `path` ([`FileError::Occupied`]):
/// the file appears whole, and only where there was none.
///
/// # Errors
/// [`FileError::Occupied`] if `path` exists, [`FileError::Write`] otherwise.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut tmp = TempOutput::beside(path)?;
    tmp.write(bytes)?;
    tmp.persist(0o644, false)
}

/// Refuses an output path that names one of the inputs (the same file by device and inode when
/// both exist, or the same absolute path).
///
/// # Errors
/// [`FileError::SameAsInput`].
pub fn refuse_same_file(output: &Path, inputs: &[&Path]) -> Result<(), FileError> {
    for input in inputs {
        if same_file(output, input) {
            return Err(FileError::SameAsInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (absolute(a), absolute(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `path` made absolute with its directory canonicalized (the file itself need not exist).
fn absolute(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = std::fs::canonicalize(dir_of(path)).ok()?;
    Some(dir.join(name))
}

/// A set of output files written together (see the [module docs](self)): stage with
/// [`OutputDir::stage`], write into [`OutputDir::path`], then [`OutputDir::commit`]. Dropped
/// without a commit, the staging directory is removed and the target is untouched.
#[derive(Debug)]
pub struct OutputDir {
    target: PathBuf,
    staging: tempfile::TempDir,
}

impl OutputDir {
    /// Prepares to write the directory `target`. If it exists it must be a directory whose
    /// entries all satisfy `owned` (the names of the verb's own outputs, which the commit
    /// replaces); the staging directory is created beside it.
    ///
    /// # Errors
    /// [`FileError::NotAFile`] if `target` exists and is not a directory (reported with its
    /// kind), [`FileError::Occupied`] if it holds foreign entries, [`FileError::Write`] if the
    /// staging directory cannot be created.
    pub fn stage(target: &Path, owned: &dyn Fn(&str) -> bool) -> Result<Self, FileError> {
        check_owned(target, owned)?;
        let parent = dir_of(target);
        std::fs::create_dir_all(parent).map_err(|source| FileError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
        let staging = tempfile::Builder::new()
            .prefix(".veritrace-staging-")
            .tempdir_in(parent)
            .map_err(|source| FileError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|source| FileError::Write {
                    path: staging.path().to_path_buf(),
                    source,
                })?;
        }
        Ok(OutputDir {
            target: target.to_path_buf(),
            staging,
        })
    }

    /// The staging directory to write the set into.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// The directory the set will appear as.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` as the file `name` of the set (synced).
    ///
    /// # Errors
    /// [`FileError::Write`].
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        self.write_with(name, |w| w.write_all(bytes))
    }

    /// [`OutputDir::write`] of the bytes `fill` writes into a buffered writer of the file, so
    /// that large content is never held whole in memory.
    ///
    /// # Errors
    /// [`FileError::Write`], with `fill`'s error as its source.
    pub fn write_with(
        &self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), FileError> {
        let path = self.staging.path().join(name);
        let failed = |source| FileError::Write {
            path: self.target.join(name),
            source,
        };
        let mut f = File::create(&path).map_err(failed)?;
        {
            let mut w = std::io::BufWriter::new(&mut f);
            fill(&mut w).and_then(|()| w.flush()).map_err(failed)?;
        }
        f.sync_all().map_err(failed)
    }

    /// Puts the set in place in one step. A target that appeared meanwhile is checked again
    /// with the same rule.
    ///
    /// # Errors
    /// [`FileError::Occupied`] if the target gained foreign entries, [`FileError::Write`] if a
    /// rename fails (the target is then unchanged).
    pub fn commit(self, owned: &dyn Fn(&str) -> bool) -> Result<(), FileError> {
        let failed = |source| FileError::Write {
            path: self.target.clone(),
            source,
        };
        // Sync every staged file (those written through `path()` directly as well).
        let entries = std::fs::read_dir(self.staging.path()).map_err(failed)?;
        for entry in entries {
            let entry = entry.map_err(failed)?;
            if entry.file_type().map_err(failed)?.is_file() {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(failed)?;
            }
        }
        sync_dir(self.staging.path());
        let staging = self.staging.keep();
        let result = swap_into_place(&staging, &self.target, owned);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }
}

fn check_owned(target: &Path, owned: &dyn Fn(&str) -> bool) -> Result<(), FileError> {
    let meta = match std::fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FileError::Read {
                path: target.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(FileError::NotAFile {
            path: target.to_path_buf(),
            kind: if meta.file_type().is_symlink() {
                "a symbolic link (an output directory must be a real directory)"
            } else if meta.is_file() {
                "a file (an output directory was expected)"
            } else {
                kind_of(meta.file_type())
            },
        });
    }
    let read = |source| FileError::Read {
        path: target.to_path_buf(),
        source,
    };
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(target).map_err(read)? {
        let entry = entry.map_err(read)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(read)?.is_file();
        if !(is_file && owned(&name)) {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let more = foreign.len().saturating_sub(5);
    foreign.truncate(5);
    let mut entries = foreign
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        entries.push_str(&format!(" and {more} more"));
    }
    Err(FileError::Occupied {
        path: target.to_path_buf(),
        entries,
    })
}

fn swap_into_place(
    staging: &Path,
    target: &Path,
    owned: &dyn Fn(&str) -> bool,
) -> Result<(), FileError> {
    let failed = |source| FileError::Write {
        path: target.to_path_buf(),
        source,
    };
    let parent = dir_of(target);
    for _attempt in 0..8 {
        check_owned(target, owned)?;
        if std::fs::symlink_metadata(target).is_err() {
            match std::fs::rename(staging, target) {
                Ok(()) => {
                    sync_dir(parent);
                    return Ok(());
                }
                // Created meanwhile (by a concurrent run): go round and exchange.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(failed(e)),
            }
        }
        match exchange(staging, target) {
            Ok(()) => {
                // `staging` now holds the old set: every entry of it was checked to be ours.
                let _ = std::fs::remove_dir_all(staging);
                sync_dir(parent);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                // No atomic exchange here: move the old set aside, then the new one in.
                let aside = tempfile::Builder::new()
                    .prefix(".veritrace-old-")
                    .tempdir_in(parent)
                    .map_err(failed)?
                    .keep();
                std::fs::remove_dir(&aside).map_err(failed)?;
                std::fs::rename(target, &aside).map_err(failed)?;
                if let Err(e) = std::fs::rename(staging, target) {
                    let _ = std::fs::rename(&aside, target);
                    return Err(failed(e));
                }
                let _ = std::fs::remove_dir_all(&aside);
                sync_dir(parent);
                return Ok(());
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Err(failed(std::io::Error::other(
        "the target kept changing under concurrent writers",
    )))
}

/// Atomically exchanges two existing paths (Linux `renameat2(RENAME_EXCHANGE)`); `Unsupported`
/// elsewhere or where the file system lacks it.
#[allow(unsafe_code)]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call;
        // renameat2 reads them and touches no other memory.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, e));
        }
        Err(e)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no atomic exchange on this platform",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limited_checks_size_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_limited(&p, 10, "x", "").unwrap(), b"0123456789");
        let e = read_limited(&p, 9, "a test file", "set X").unwrap_err();
        assert!(
            matches!(
                e,
                FileError::TooLarge {
                    size: 10,
                    limit: 9,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("set X"), "{e}");
        assert!(e.is_input());
        let e = read_limited(dir.path(), 9, "x", "").unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{e}"
        );
        let e = read_limited(&dir.path().join("missing"), 9, "x", "").unwrap_err();
        assert!(matches!(e, FileError::Read { .. }) && e.is_input(), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_fifos_are_refused_without_blocking() {
        let e = read_limited(Path::new("/dev/zero"), 1 << 20, "x", "").unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotAFile {
                    kind: "a character device",
                    ..
                }
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        // Would block forever if it were opened for reading.
        let e = open_regular(&fifo).unwrap_err();
        assert!(
            matches!(e, FileError::NotAFile { kind: "a FIFO", .. }),
            "{e}"
        );
    }

    #[test]
    fn write_atomic_leaves_neighbours_alone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("answer");
        let user = dir.path().join("answer.tmp");
        std::fs::write(&user, b"mine").unwrap();
        write_atomic(&out, b"one").unwrap();
        write_atomic(&out, b"two").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        assert_eq!(std::fs::read(&user).unwrap(), b"mine");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn an_output_that_is_a_device_or_fifo_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        for result in [write_atomic(&fifo, b"x"), write_new(&fifo, b"x")] {
            let e = result.unwrap_err();
            assert!(
                matches!(e, FileError::NotAFile { kind: "a FIFO", .. }),
                "{e}"
            );
            assert!(e.is_input());
        }
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        // A directory is not replaced either; a symlink to a regular file is written through
        // the rename (the link is replaced by the new file).
        assert!(write_atomic(dir.path(), b"x").is_err());
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        // Checking a device is read-only: /dev/null stays a character device.
        let e = check_output_file(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotAFile {
                    kind: "a character device",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, b"{}").unwrap();
        let dotted = dir.path().join(".").join("c.json");
        assert!(refuse_same_file(&dotted, &[&p]).is_err());
        assert!(refuse_same_file(&dir.path().join("d.json"), &[&p]).is_ok());
    }

    #[test]
    fn output_dir_swaps_whole_sets_and_keeps_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("run");
        let owned = |n: &str| n == "a" || n == "b";
        let set = OutputDir::stage(&target, &owned).unwrap();
        set.write("a", b"1").unwrap();
        set.write("b", b"1").unwrap();
        set.commit(&owned).unwrap();
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"1");
        // a second set replaces the first whole
        let set = OutputDir::stage(&target, &owned).unwrap();
        set.write("a", b"2").unwrap();
        set.commit(&owned).unwrap();
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"2");
        assert!(!target.join("b").exists());
        // an abandoned set changes nothing and leaves nothing behind
        let set = OutputDir::stage(&target, &owned).unwrap();
        set.write("a", b"3").unwrap();
        drop(set);
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // a foreign file is never replaced
        std::fs::write(target.join("notes.txt"), b"mine").unwrap();
        let e = OutputDir::stage(&target, &owned).unwrap_err();
        assert!(matches!(e, FileError::Occupied { .. }), "{e}");
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert_eq!(std::fs::read(target.join("notes.txt")).unwrap(), b"mine");
    }
}

//! Where the origin keeps its two repositories' files (`image/…`, `director/…`): the origin
//! directory itself (the embedded default), or object storage — S3 and compatible stores, Google
//! Cloud Storage, Azure Blob Storage — through the `object_store` crate, so that the origin's
//! machines hold no state of their own but keys, and director replicas on several hosts share
//! one copy.
//!
//! The choice is made once, by `origin init --storage URL`, and kept in `DIR/storage.toml`, so
//! that no later command can write to the wrong place by a forgotten flag:
//!
//! ```toml
//! url = "s3://fleet-origin/prod"
//! [options]
//! region = "eu-central-1"
//! ```
//!
//! `options` are the store's own configuration keys (`endpoint`, `region`, `allow_http`, …;
//! unknown ones refused). Credentials never go there: they come from the environment
//! (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_KEY`, …), the
//! instance's role, or the store's usual credential files, and a secret-looking option is
//! refused. Plain HTTP is refused unless `allow_http = "true"` says otherwise (a loopback test).
//!
//! Files are named by their path under the repository root (`image/metadata/1.root.json`).
//! What is stored is verified by whoever reads it (the origin's chain check before it signs on
//! top, a vehicle's TUF client, BLAKE3 for blobs); the store is trusted for availability only.
//! The origin's code is synchronous; requests to an object store run on a small runtime of
//! this module's own, so that a call from anywhere (a CLI command, the director's blocking
//! pool) waits for its answer.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

/// The file in the origin directory that names the storage.
pub const CONFIG_FILE: &str = "storage.toml";
/// Objects at least this large are uploaded in parts of this size.
const PART: usize = 16 << 20;

/// Why a stored file could not be read, written or listed; names the file (its path, or its
/// URL in object storage).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The origin directory's storage configuration is wrong.
    #[error("{file}: {reason}")]
    Config {
        /// `DIR/storage.toml`, or the flag that gave it.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file name this module refuses (empty part, `.`, `..`, backslash).
    #[error("{0:?}: not a storage path")]
    BadKey(String),
    /// A local file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The object store refused or failed the request.
    #[error("{url}: {source}")]
    Object {
        /// The object's URL.
        url: String,
        /// What the store said.
        source: object_store::Error,
    },
    /// The storage runtime stopped (the process is ending).
    #[error("the storage runtime stopped")]
    Stopped,
}

/// One stored file found by [`Storage::list_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its path under the repository root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// What changes when it is rewritten (an object's ETag; a local file's length and mtime).
    pub version: String,
}

/// `DIR/storage.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `https://…` (an S3 or Azure endpoint), or
    /// `file:///absolute/path`.
    pub url: String,
    /// The store's configuration keys.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// Option names that hold credentials, refused in `storage.toml`.
const SECRET_WORDS: [&str; 7] = [
    "secret",
    "token",
    "password",
    "access_key",
    "account_key",
    "service_account",
    "sas",
];

impl StorageConfig {
    /// Parses `--storage URL` with `--storage-option KEY=VALUE`s.
    ///
    /// # Errors
    /// An option without `=`.
    pub fn from_flags(url: &str, options: &[String]) -> Result<Self, StorageError> {
        let mut config = Self {
            url: url.to_owned(),
            options: std::collections::BTreeMap::new(),
        };
        for option in options {
            let (key, value) = option.split_once('=').ok_or_else(|| StorageError::Config {
                file: "--storage-option".into(),
                reason: format!("{option:?} is not KEY=VALUE"),
            })?;
            config.options.insert(key.to_owned(), value.to_owned());
        }
        Ok(config)
    }
}

/// Records `config` as the storage of origin directory `dir` (made when missing), for every
/// later command; refuses to change one already recorded.
///
/// # Errors
/// Another storage recorded, or the file cannot be written.
pub fn record(dir: &Path, config: &StorageConfig) -> Result<(), StorageError> {
    let file = dir.join(CONFIG_FILE);
    let io = |source| StorageError::Io {
        path: file.clone(),
        source,
    };
    let text = toml::to_string(config).map_err(|error| StorageError::Config {
        file: file.display().to_string(),
        reason: error.to_string(),
    })?;
    match std::fs::read_to_string(&file) {
        Ok(existing) if existing == text => return Ok(()),
        Ok(_) => {
            return Err(StorageError::Config {
                file: file.display().to_string(),
                reason: "already names another storage; an origin's repositories stay where they were made".into(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(source)),
    }
    std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    crate::write_durably(&file, text.as_bytes()).map_err(io)
}

/// Where the repositories are: cheap to clone, shared.
#[derive(Clone)]
pub struct Storage(Arc<Backend>);

enum Backend {
    /// Files under a directory (the origin directory by default).
    Local(PathBuf),
    /// An object store.
    Object(ObjectBackend),
}

struct ObjectBackend {
    /// The configured URL, for messages.
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: Runtime,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Backend::Local(dir) => f.debug_tuple("Storage::Local").field(dir).finish(),
            Backend::Object(object) => f.debug_tuple("Storage::Object").field(&object.url).finish(),
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Backend::Local(dir) => write!(f, "{}", dir.display()),
            Backend::Object(object) => f.write_str(&object.url),
        }
    }
}

impl Storage {
    /// Files under `dir`.
    pub fn local(dir: &Path) -> Self {
        Self(Arc::new(Backend::Local(dir.to_path_buf())))
    }

    /// The storage of the origin directory `dir`: what its `storage.toml` names, or the
    /// directory itself when there is none.
    ///
    /// # Errors
    /// An unreadable or wrong `storage.toml`.
    pub fn of_origin(dir: &Path) -> Result<Self, StorageError> {
        let file = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::local(dir));
            }
            Err(source) => return Err(StorageError::Io { path: file, source }),
        };
        let config: StorageConfig =
            toml::from_str(&text).map_err(|error| StorageError::Config {
                file: file.display().to_string(),
                reason: error.to_string(),
            })?;
        Self::open(&config, &file.display().to_string())
    }

    /// Opens the storage `config` names (`source`: where it was given, for messages).
    ///
    /// # Errors
    /// A URL of no known store, an unknown or secret option, or a store that cannot be built.
    pub fn open(config: &StorageConfig, source: &str) -> Result<Self, StorageError> {
        let refuse = |reason: String| StorageError::Config {
            file: source.to_owned(),
            reason,
        };
        for key in config.options.keys() {
            let lower = key.to_ascii_lowercase();
            if SECRET_WORDS.iter().any(|word| lower.contains(word)) {
                return Err(refuse(format!(
                    "option {key:?} holds a credential: give it in the environment (AWS_*, GOOGLE_*, AZURE_*) or the store's credential file, never in a file"
                )));
            }
        }
        let url = url::Url::parse(&config.url)
            .map_err(|error| refuse(format!("url {:?}: {error}", config.url)))?;
        let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|error| {
            refuse(format!(
                "url {:?}: {error} (give s3://, gs://, az://, an S3 or Azure https:// endpoint, or file:///path)",
                config.url
            ))
        })?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                if !config.options.is_empty() {
                    return Err(refuse("a file:// storage takes no options".into()));
                }
                let dir = url
                    .to_file_path()
                    .map_err(|()| refuse(format!("url {:?}: not a local path", config.url)))?;
                return Ok(Self::local(&dir));
            }
            ObjectStoreScheme::AmazonS3 => {
                let options = parsed_options(&config.options, "S3", &refuse)?;
                let builder = options.into_iter().fold(
                    object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str()),
                    |builder, (key, value)| builder.with_config(key, value),
                );
                Arc::new(builder.build().map_err(|error| refuse(error.to_string()))?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let options = parsed_options(&config.options, "Google Cloud Storage", &refuse)?;
                let builder = options.into_iter().fold(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str()),
                    |builder, (key, value)| builder.with_config(key, value),
                );
                Arc::new(builder.build().map_err(|error| refuse(error.to_string()))?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let options = parsed_options(&config.options, "Azure", &refuse)?;
                let builder = options.into_iter().fold(
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str()),
                    |builder, (key, value)| builder.with_config(key, value),
                );
                Arc::new(builder.build().map_err(|error| refuse(error.to_string()))?)
            }
            other => {
                return Err(refuse(format!(
                    "url {:?}: {other:?} is not a store for repositories (give s3://, gs://, az:// or file:///path)",
                    config.url
                )));
            }
        };
        let prefix = ObjectPath::parse(path.as_ref())
            .map_err(|error| refuse(format!("url {:?}: {error}", config.url)))?;
        let runtime = Runtime::start().map_err(|source| StorageError::Io {
            path: PathBuf::from("storage runtime"),
            source,
        })?;
        Ok(Self(Arc::new(Backend::Object(ObjectBackend {
            url: config.url.trim_end_matches('/').to_owned(),
            store,
            prefix,
            runtime,
        }))))
    }

    /// The directory, when the repositories are local files (`None`: object storage).
    pub fn local_dir(&self) -> Option<&Path> {
        match &*self.0 {
            Backend::Local(dir) => Some(dir),
            Backend::Object(_) => None,
        }
    }

    /// Where file `key` is, for messages: its path or URL.
    pub fn describe(&self, key: &str) -> String {
        match &*self.0 {
            Backend::Local(dir) => dir.join(key).display().to_string(),
            Backend::Object(object) => format!("{}/{key}", object.url),
        }
    }

    /// File `key`'s bytes; `None` when there is no such file.
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        match &*self.0 {
            Backend::Local(dir) => {
                let path = dir.join(key);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StorageError::Io { path, source }),
                }
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(key));
                let got = object.runtime.run(async move {
                    match store.get(&path).await {
                        Ok(result) => result.bytes().await.map(|bytes| Some(bytes.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(error) => Err(error),
                    }
                })?;
                got.map_err(|source| object.error(key, source))
            }
        }
    }

    /// File `key`'s bytes and what changes when it is rewritten (as [`Listed::version`]);
    /// `None` when there is no such file.
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn read_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StorageError> {
        check_key(key)?;
        match &*self.0 {
            Backend::Local(dir) => {
                let path = dir.join(key);
                let io = |source| StorageError::Io {
                    path: path.clone(),
                    source,
                };
                let meta = match std::fs::metadata(&path) {
                    Ok(meta) => meta,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(io(source)),
                };
                let bytes = std::fs::read(&path).map_err(io)?;
                Ok(Some((bytes, local_version(&meta))))
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(key));
                let got = object.runtime.run(async move {
                    match store.get(&path).await {
                        Ok(result) => {
                            let meta = result.meta.clone();
                            let bytes = result.bytes().await?;
                            let version = meta
                                .e_tag
                                .unwrap_or_else(|| meta.last_modified.to_rfc3339());
                            Ok(Some((bytes.to_vec(), version)))
                        }
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(error) => Err(error),
                    }
                })?;
                got.map_err(|source| object.error(key, source))
            }
        }
    }

    /// Whether file `key` exists.
    ///
    /// # Errors
    /// When the store cannot say.
    pub fn exists(&self, key: &str) -> Result<bool, StorageError> {
        check_key(key)?;
        match &*self.0 {
            Backend::Local(dir) => Ok(dir.join(key).exists()),
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(key));
                let found = object.runtime.run(async move {
                    match store.head(&path).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(error) => Err(error),
                    }
                })?;
                found.map_err(|source| object.error(key, source))
            }
        }
    }

    /// Writes file `key` whole, durably (a local file is replaced atomically and synced; an
    /// object is in place once the store acknowledged it).
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn write(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        match &*self.0 {
            Backend::Local(dir) => {
                let path = dir.join(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                crate::write_durably(&path, bytes)
                    .map_err(|source| StorageError::Io { path, source })
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(key));
                let payload = PutPayload::from(bytes.to_vec());
                let put = object
                    .runtime
                    .run(async move { store.put(&path, payload).await.map(|_| ()) })?;
                put.map_err(|source| object.error(key, source))
            }
        }
    }

    /// Writes file `key` only if there is none yet, durably; `false` when one exists (and is
    /// left as it was). The store decides atomically (a local exclusive create; an object
    /// store's conditional put, `If-None-Match: *`), so of two writers racing for one name
    /// exactly one gets it.
    ///
    /// # Errors
    /// When it cannot be written, or the store cannot put conditionally.
    pub fn create(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        check_key(key)?;
        match &*self.0 {
            Backend::Local(dir) => {
                let path = dir.join(key);
                let io = |source| StorageError::Io {
                    path: path.clone(),
                    source,
                };
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                // Written whole beside it, then linked in: the name never shows a part.
                let tmp =
                    tempfile::NamedTempFile::new_in(path.parent().unwrap_or(dir)).map_err(io)?;
                tmp.as_file().write_all(bytes).map_err(io)?;
                tmp.as_file().sync_all().map_err(io)?;
                match tmp.persist_noclobber(&path) {
                    Ok(_) => {}
                    Err(error) if error.error.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Ok(false);
                    }
                    Err(error) => return Err(io(error.error)),
                }
                sync_dir(&path)?;
                Ok(true)
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(key));
                let payload = PutPayload::from(bytes.to_vec());
                let put = object.runtime.run(async move {
                    let options = object_store::PutOptions {
                        mode: object_store::PutMode::Create,
                        ..Default::default()
                    };
                    match store.put_opts(&path, payload, options).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                        Err(error) => Err(error),
                    }
                })?;
                put.map_err(|source| object.error(key, source))
            }
        }
    }

    /// Stores the local file `file` as `key`, streamed (large objects in parts).
    ///
    /// # Errors
    /// When the file cannot be read or the store refuses it.
    pub fn upload(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        check_key(key)?;
        let io = |source| StorageError::Io {
            path: file.to_path_buf(),
            source,
        };
        match &*self.0 {
            Backend::Local(dir) => {
                let path = dir.join(key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                let tmp =
                    tempfile::NamedTempFile::new_in(path.parent().unwrap_or(dir)).map_err(io)?;
                std::fs::copy(file, tmp.path()).map_err(io)?;
                tmp.as_file().sync_all().map_err(io)?;
                tmp.persist(&path).map_err(|error| io(error.error))?;
                sync_dir(&path)
            }
            Backend::Object(object) => {
                let size = std::fs::metadata(file).map_err(io)?.len();
                let (store, path, local) =
                    (object.store.clone(), object.path(key), file.to_owned());
                let uploaded = object.runtime.run(async move {
                    let failed = |source| Err(UploadError::Io(source));
                    if size < PART as u64 {
                        let bytes = match tokio::fs::read(&local).await {
                            Ok(bytes) => bytes,
                            Err(source) => return failed(source),
                        };
                        return store
                            .put(&path, PutPayload::from(bytes))
                            .await
                            .map(|_| ())
                            .map_err(UploadError::Object);
                    }
                    let upload = store
                        .put_multipart(&path)
                        .await
                        .map_err(UploadError::Object)?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
                    let mut reader = match tokio::fs::File::open(&local).await {
                        Ok(reader) => reader,
                        Err(source) => {
                            writer.abort().await.ok();
                            return failed(source);
                        }
                    };
                    let mut buffer = vec![0u8; PART];
                    loop {
                        let read = tokio::io::AsyncReadExt::read(&mut reader, &mut buffer).await;
                        match read {
                            Ok(0) => break,
                            Ok(n) => {
                                writer.write(&buffer[..n]);
                                writer
                                    .wait_for_capacity(2)
                                    .await
                                    .map_err(UploadError::Object)?;
                            }
                            Err(source) => {
                                writer.abort().await.ok();
                                return failed(source);
                            }
                        }
                    }
                    writer
                        .finish()
                        .await
                        .map(|_| ())
                        .map_err(UploadError::Object)
                })?;
                uploaded.map_err(|error| match error {
                    UploadError::Io(source) => io(source),
                    UploadError::Object(source) => object.error(key, source),
                })
            }
        }
    }

    /// Copies file `key` into the local file `file` (replaced atomically, synced); `false`
    /// when there is no such file.
    ///
    /// # Errors
    /// When it cannot be read or `file` written.
    pub fn download(&self, key: &str, file: &Path) -> Result<bool, StorageError> {
        check_key(key)?;
        let io = |source| StorageError::Io {
            path: file.to_path_buf(),
            source,
        };
        let parent = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
        match &*self.0 {
            Backend::Local(dir) => {
                let from = dir.join(key);
                match std::fs::File::open(&from) {
                    Ok(mut source) => {
                        std::io::copy(&mut source, tmp.as_file_mut()).map_err(io)?;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(source) => return Err(StorageError::Io { path: from, source }),
                }
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(key));
                let (chunks, got) = std::sync::mpsc::sync_channel::<bytes::Bytes>(4);
                let fetched = object.runtime.spawn(async move {
                    let result = match store.get(&path).await {
                        Ok(result) => result,
                        Err(object_store::Error::NotFound { .. }) => return Ok(false),
                        Err(error) => return Err(error),
                    };
                    let mut stream = result.into_stream();
                    while let Some(chunk) = stream.next().await {
                        if chunks.send(chunk?).is_err() {
                            break;
                        }
                    }
                    Ok(true)
                });
                for chunk in got {
                    tmp.write_all(&chunk).map_err(io)?;
                }
                match fetched.recv().map_err(|_| StorageError::Stopped)? {
                    Ok(true) => {}
                    Ok(false) => return Ok(false),
                    Err(source) => return Err(object.error(key, source)),
                }
            }
        }
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(file).map_err(|error| io(error.error))?;
        sync_dir(file)?;
        Ok(true)
    }

    /// The names directly under directory `dir` (files and directories), sorted; none when
    /// there is no such directory.
    ///
    /// # Errors
    /// When it cannot be listed.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, StorageError> {
        check_key(dir)?;
        match &*self.0 {
            Backend::Local(root) => {
                let path = root.join(dir);
                let entries = match std::fs::read_dir(&path) {
                    Ok(entries) => entries,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Vec::new());
                    }
                    Err(source) => return Err(StorageError::Io { path, source }),
                };
                let mut names = BTreeSet::new();
                for entry in entries {
                    let entry = entry.map_err(|source| StorageError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    if let Some(name) = entry.file_name().to_str() {
                        names.insert(name.to_owned());
                    }
                }
                Ok(names.into_iter().collect())
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(dir));
                let listed = object
                    .runtime
                    .run(async move { store.list_with_delimiter(Some(&path)).await })?
                    .map_err(|source| object.error(dir, source))?;
                let mut names = BTreeSet::new();
                for found in listed
                    .common_prefixes
                    .iter()
                    .chain(listed.objects.iter().map(|o| &o.location))
                {
                    if let Some(name) = found.filename() {
                        names.insert(name.to_owned());
                    }
                }
                Ok(names.into_iter().collect())
            }
        }
    }

    /// Every file under directory `dir`, at any depth, sorted by key.
    ///
    /// # Errors
    /// When it cannot be listed.
    pub fn list_all(&self, dir: &str) -> Result<Vec<Listed>, StorageError> {
        check_key(dir)?;
        match &*self.0 {
            Backend::Local(root) => {
                let mut found = Vec::new();
                list_local(root, dir, &mut found)?;
                found.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(found)
            }
            Backend::Object(object) => {
                let (store, path) = (object.store.clone(), object.path(dir));
                let listed = object.runtime.run(async move {
                    let mut stream = store.list(Some(&path));
                    let mut found = Vec::new();
                    while let Some(meta) = stream.next().await {
                        found.push(meta?);
                    }
                    Ok::<_, object_store::Error>(found)
                })?;
                let listed = listed.map_err(|source| object.error(dir, source))?;
                let mut found: Vec<Listed> = listed
                    .into_iter()
                    .filter_map(|meta| {
                        let key = object.key_of(&meta.location)?;
                        Some(Listed {
                            key,
                            size: meta.size,
                            version: meta
                                .e_tag
                                .unwrap_or_else(|| meta.last_modified.to_rfc3339()),
                        })
                    })
                    .collect();
                found.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(found)
            }
        }
    }
}

/// `options` as the store's configuration keys `K`; an unknown one refused, naming `store`.
fn parsed_options<K: std::str::FromStr>(
    options: &std::collections::BTreeMap<String, String>,
    store: &str,
    refuse: &impl Fn(String) -> StorageError,
) -> Result<Vec<(K, String)>, StorageError> {
    options
        .iter()
        .map(|(key, value)| {
            let parsed = key
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| refuse(format!("option {key:?}: no such {store} option")))?;
            Ok((parsed, value.clone()))
        })
        .collect()
}

enum UploadError {
    Io(std::io::Error),
    Object(object_store::Error),
}

fn list_local(root: &Path, dir: &str, found: &mut Vec<Listed>) -> Result<(), StorageError> {
    let path = root.join(dir);
    let entries = match std::fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StorageError::Io { path, source }),
    };
    for entry in entries {
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let entry = entry.map_err(io)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let key = format!("{dir}/{name}");
        let meta = entry.metadata().map_err(io)?;
        if meta.is_dir() {
            list_local(root, &key, found)?;
        } else {
            found.push(Listed {
                key,
                size: meta.len(),
                version: local_version(&meta),
            });
        }
    }
    Ok(())
}

/// Syncs the directory holding `path`, so that a rename into it survives a power cut.
fn sync_dir(path: &Path) -> Result<(), StorageError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// A local file's version: its length and modification time.
fn local_version(meta: &std::fs::Metadata) -> String {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!("{}-{}", meta.len(), modified.as_nanos())
}

/// Refuses a key with an empty part, `.`, `..` or a backslash.
fn check_key(key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.contains('\\')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(StorageError::BadKey(key.to_owned()));
    }
    Ok(())
}

impl ObjectBackend {
    fn path(&self, key: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in key.split('/') {
            path = path.join(part);
        }
        path
    }

    /// The key of an object under the prefix.
    fn key_of(&self, path: &ObjectPath) -> Option<String> {
        let parts: Vec<String> = path
            .prefix_match(&self.prefix)?
            .map(|part| part.as_ref().to_owned())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    fn error(&self, key: &str, source: object_store::Error) -> StorageError {
        StorageError::Object {
            url: format!("{}/{key}", self.url),
            source,
        }
    }
}

/// A tokio runtime on threads of its own, kept by a thread that drops it (outside any async
/// context) once every [`Storage`] that uses it is gone.
struct Runtime {
    handle: tokio::runtime::Handle,
    /// Dropped with the last storage: the keeper thread then ends the runtime.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Runtime {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("origin-storage")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("origin-storage-keeper".into())
            .spawn(move || {
                // Err once the sender is dropped: nothing uses the runtime any more.
                let _ = stopped.recv();
                drop(runtime);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Runs `future` on the runtime; its output arrives on the receiver.
    fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> std::sync::mpsc::Receiver<T> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = done.send(future.await);
        });
        result
    }

    /// Runs `future` on the runtime and waits for its output.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.spawn(future).recv().map_err(|_| StorageError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_storage_reads_writes_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path());
        assert_eq!(storage.read("image/metadata/1.root.json").unwrap(), None);
        storage
            .write("image/metadata/1.root.json", b"root")
            .unwrap();
        storage.write("image/targets/a/b.bin", b"blob").unwrap();
        assert_eq!(
            storage
                .read("image/metadata/1.root.json")
                .unwrap()
                .as_deref(),
            Some(&b"root"[..])
        );
        assert_eq!(storage.list("image").unwrap(), ["metadata", "targets"]);
        assert!(storage.list("director").unwrap().is_empty());
        let all: Vec<String> = storage
            .list_all("image")
            .unwrap()
            .into_iter()
            .map(|listed| listed.key)
            .collect();
        assert_eq!(all, ["image/metadata/1.root.json", "image/targets/a/b.bin"]);
        assert!(storage.create("audit/1.json", b"one").unwrap());
        assert!(!storage.create("audit/1.json", b"other").unwrap());
        assert_eq!(
            storage.read("audit/1.json").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        let out = dir.path().join("out/copy");
        assert!(storage.download("image/targets/a/b.bin", &out).unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), b"blob");
        assert!(!storage.download("image/targets/none", &out).unwrap());
    }

    #[test]
    fn bad_keys_and_configs_are_refused_naming_what() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path());
        for key in ["", "../x", "image//x", "image/./x", "a\\b"] {
            assert!(
                matches!(storage.read(key), Err(StorageError::BadKey(_))),
                "{key}"
            );
        }
        let secret =
            StorageConfig::from_flags("s3://bucket/p", &["aws_secret_access_key=x".to_owned()])
                .unwrap();
        let error = Storage::open(&secret, "test").unwrap_err().to_string();
        assert!(error.contains("holds a credential"), "{error}");
        let unknown =
            StorageConfig::from_flags("s3://bucket/p", &["colour=blue".to_owned()]).unwrap();
        let error = Storage::open(&unknown, "test").unwrap_err().to_string();
        assert!(error.contains("no such S3 option"), "{error}");
        let scheme = StorageConfig::from_flags("ftp://host/x", &[]).unwrap();
        assert!(Storage::open(&scheme, "test").is_err());
        assert!(StorageConfig::from_flags("s3://b", &["novalue".to_owned()]).is_err());
        std::fs::write(dir.path().join(CONFIG_FILE), "url = 3\n").unwrap();
        let error = Storage::of_origin(dir.path()).unwrap_err().to_string();
        assert!(error.contains("storage.toml"), "{error}");
    }
}

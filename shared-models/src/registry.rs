//! The registry: versions and aliases of model bundles in an object store.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
#[cfg(feature = "cloud")]
use object_store::aws::AmazonS3Builder;
#[cfg(feature = "cloud")]
use object_store::azure::MicrosoftAzureBuilder;
#[cfg(feature = "cloud")]
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
#[cfg(feature = "cloud")]
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use shared_features::tables::sha256_hex;

use crate::bundle::{Bundle, MANIFEST, Manifest, check_name, check_sum, valid_file_name};
use crate::error::RegistryError;

type Result<T> = std::result::Result<T, RegistryError>;

/// Which model: `name` (its newest version), `name@3` or `name@champion`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    /// The newest complete version.
    Latest(String),
    /// A version number.
    Version(String, u64),
    /// An alias.
    Alias(String, String),
}

impl ModelRef {
    /// Parse `name`, `name@version` or `name@alias`. Names and aliases are letters, digits,
    /// `_`, `-` and `.`; an alias does not start with a digit.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || RegistryError::BadRef(text.to_string());
        let (name, tail) = match text.split_once('@') {
            Some((n, t)) => (n, Some(t)),
            None => (text, None),
        };
        if !valid_name(name) {
            return Err(bad());
        }
        Ok(match tail {
            None => Self::Latest(name.to_string()),
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                Self::Version(name.to_string(), t.parse().map_err(|_| bad())?)
            }
            Some(t) if valid_name(t) => Self::Alias(name.to_string(), t.to_string()),
            Some(_) => return Err(bad()),
        })
    }

    /// The model name.
    pub fn name(&self) -> &str {
        match self {
            Self::Latest(n) | Self::Version(n, _) | Self::Alias(n, _) => n,
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// A bucket store for `s3://`, `gs://` and `az://` URLs (`None` for other schemes); a path after
/// the bucket becomes a prefix of every key.
#[cfg(feature = "cloud")]
fn cloud(
    url: &str,
    options: impl IntoIterator<Item = (String, String)>,
) -> std::result::Result<Option<Arc<dyn ObjectStore>>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("the URL names no bucket".into());
    }
    let bucket_url = format!("{scheme}://{bucket}");
    let options: Vec<(String, String)> = options.into_iter().collect();
    let bad = |e: &dyn std::fmt::Display| e.to_string();
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env().with_url(&bucket_url);
            for (k, v) in &options {
                b = b.with_config(k.parse().map_err(|e| bad(&e))?, v);
            }
            Arc::new(b.build().map_err(|e| bad(&e))?)
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_url(&bucket_url);
            for (k, v) in &options {
                b = b.with_config(k.parse().map_err(|e| bad(&e))?, v);
            }
            Arc::new(b.build().map_err(|e| bad(&e))?)
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let mut b = MicrosoftAzureBuilder::from_env().with_url(&bucket_url);
            for (k, v) in &options {
                b = b.with_config(k.parse().map_err(|e| bad(&e))?, v);
            }
            Arc::new(b.build().map_err(|e| bad(&e))?)
        }
        _ => return Ok(None),
    };
    let prefix = prefix.trim_matches('/');
    Ok(Some(if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }))
}

/// Without the `cloud` feature (the edge build) bucket URLs are refused, saying why.
#[cfg(not(feature = "cloud"))]
fn cloud(
    url: &str,
    _options: impl IntoIterator<Item = (String, String)>,
) -> std::result::Result<Option<Arc<dyn ObjectStore>>, String> {
    if is_bucket_url(url) {
        return Err(
            "this build has no cloud store clients (built without the `cloud` \
                    feature, as the edge profile is): use a file:// store"
                .into(),
        );
    }
    Ok(None)
}

/// Whether `text` names an object in a bucket store: `s3://`, `gs://` or `az://` (and their
/// object_store spellings `s3a://`, `azure://`, `abfs://`, `abfss://`).
pub fn is_bucket_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        matches!(
            scheme,
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss"
        )
    })
}

/// The store and key of one object named by its full URL, `s3://BUCKET/KEY` (or `gs://`,
/// `az://`), with credentials and endpoints from the environment as [`Registry::open`] takes
/// them; `err` builds the error for a message.
fn object_at(
    url: &str,
    err: impl Fn(String) -> RegistryError,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err("not a URL".into()))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if key.is_empty() {
        return Err(err("the URL names a bucket but no object".into()));
    }
    let store = cloud(&format!("{scheme}://{bucket}"), [])
        .map_err(&err)?
        .ok_or_else(|| err("unsupported scheme: use s3://, gs:// or az://".into()))?;
    Ok((store, Path::from(key)))
}

/// Read one object named by its full URL, `s3://BUCKET/KEY` (or `gs://`, `az://`), with
/// credentials and endpoints from the environment as [`Registry::open`] takes them.
pub async fn get_url(url: &str) -> Result<Bytes> {
    let err = |message: String| RegistryError::Store {
        url: url.to_string(),
        message,
    };
    let (store, key) = object_at(url, err)?;
    let got = store.get(&key).await.map_err(|e| err(e.to_string()))?;
    got.bytes().await.map_err(|e| err(e.to_string()))
}

/// Copy every object under the prefix a full URL names (`s3://BUCKET/PREFIX/`, or `gs://`,
/// `az://`) into `dir`, at its path below the prefix (so hive partitions stay in the paths);
/// returns the files written, in path order. A prefix with no object is an error.
pub async fn download_prefix(url: &str, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let err = |message: String| RegistryError::Store {
        url: url.to_string(),
        message,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err("not a URL".into()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let store = cloud(&format!("{scheme}://{bucket}"), [])
        .map_err(&err)?
        .ok_or_else(|| err("unsupported scheme: use s3://, gs:// or az://".into()))?;
    let prefix = Path::from(prefix.trim_end_matches('/'));
    let mut objects: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| err(e.to_string()))?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    if objects.is_empty() {
        return Err(err("no object under this prefix".into()));
    }
    let mut written = Vec::with_capacity(objects.len());
    for o in objects {
        let relative: Vec<_> = o
            .location
            .prefix_match(&prefix)
            .into_iter()
            .flatten()
            .collect();
        let mut local = dir.to_path_buf();
        for part in &relative {
            local.push(part.as_ref());
        }
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let bytes = store
            .get(&o.location)
            .await
            .map_err(|e| err(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| err(e.to_string()))?;
        std::fs::write(&local, &bytes)
            .map_err(|e| err(format!("cannot write {}: {e}", local.display())))?;
        written.push(local);
    }
    Ok(written)
}

/// Upload the local file `file` to the object named by its full URL (as [`get_url`] reads): in
/// one request when it is small, else in parts of 8 MiB, so a large file never sits in memory
/// whole. The object appears only once complete.
pub async fn put_url_from_file(url: &str, file: &std::path::Path) -> Result<u64> {
    use std::io::Read;
    const PART: usize = 8 << 20;
    let err = |message: String| RegistryError::Store {
        url: url.to_string(),
        message,
    };
    let (store, key) = object_at(url, err)?;
    let local = |e: std::io::Error| err(format!("cannot read {}: {e}", file.display()));
    let mut f = std::fs::File::open(file).map_err(local)?;
    let size = f.metadata().map_err(local)?.len();
    if size <= PART as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        f.read_to_end(&mut bytes).map_err(local)?;
        store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|e| err(e.to_string()))?;
        return Ok(size);
    }
    let upload = store
        .put_multipart(&key)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
    let mut buf = vec![0; PART];
    loop {
        let n = f.read(&mut buf).map_err(local)?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(2)
            .await
            .map_err(|e| err(e.to_string()))?;
        w.write(&buf[..n]);
    }
    w.finish().await.map_err(|e| err(e.to_string()))?;
    Ok(size)
}

#[derive(Serialize, Deserialize)]
struct AliasTarget {
    version: u64,
    set_at: String,
}

/// Model bundles in an object store.
#[derive(Clone, Debug)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl Registry {
    /// Open a store to read: `file://DIR` (relative paths are relative to the working
    /// directory), a plain directory path, `memory://` (for tests), or a bucket with an optional
    /// prefix: `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`. Cloud
    /// credentials and endpoints come from the environment, as object_store reads them
    /// (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`,
    /// `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    ///
    /// Opening never changes the store: a `file://` directory that does not exist is an error
    /// (a read would find nothing in it), not created. [`Registry::open_to_publish`] creates it.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with_options(url, std::iter::empty::<(String, String)>())
    }

    /// [`Registry::open`] with object_store configuration keys (`aws_endpoint`,
    /// `aws_allow_http`, `google_service_account`, ...) applied over the environment's.
    pub fn open_with_options(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        Self::open_as(url, options, false)
    }

    /// [`Registry::open`] for a publisher: a `file://` directory that does not exist yet is
    /// created (with its parents). Buckets are never created; they must exist.
    pub fn open_to_publish(url: &str) -> Result<Self> {
        Self::open_as(url, std::iter::empty::<(String, String)>(), true)
    }

    fn open_as(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
        create: bool,
    ) -> Result<Self> {
        let store_err = |message: String| RegistryError::Store {
            url: url.to_string(),
            message,
        };
        let store: Arc<dyn ObjectStore> = if url == "memory://" {
            Arc::new(InMemory::new())
        } else if let Some(dir) = url
            .strip_prefix("file://")
            .or((!url.contains("://")).then_some(url))
        {
            if dir.is_empty() {
                return Err(store_err("the URL names no directory".into()));
            }
            let path = std::path::Path::new(dir);
            if create {
                std::fs::create_dir_all(path)
                    .map_err(|e| store_err(format!("cannot create directory {dir}: {e}")))?;
            }
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(store_err(format!("{dir} is not a directory"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(store_err(format!(
                        "store directory {dir} does not exist (publishing creates it; reading \
                         never does)"
                    )));
                }
                Err(e) => return Err(store_err(format!("cannot read directory {dir}: {e}"))),
            }
            let dir = std::fs::canonicalize(path).map_err(|e| store_err(e.to_string()))?;
            Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(|e| store_err(e.to_string()))?)
        } else if let Some(store) = cloud(url, options).map_err(store_err)? {
            store
        } else {
            return Err(store_err(
                "unsupported scheme: use file://DIR, s3://BUCKET, gs://BUCKET, az://CONTAINER \
                 or memory://"
                    .to_string(),
            ));
        };
        Ok(Self {
            store,
            url: url.to_string(),
        })
    }

    /// Wrap an existing object store (any backend object_store supports).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str) -> Self {
        Self {
            store,
            url: url.to_string(),
        }
    }

    /// The object store underneath (keys as the registry writes them).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The URL the registry was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn version_dir(name: &str, version: u64) -> String {
        format!("models/{name}/versions/{version}")
    }

    /// Publish a new version of `manifest.name`. The registry assigns the version and creation
    /// time and fills in the checksums.
    ///
    /// The version is claimed before anything is written in it: a create-only `claim` object
    /// in its directory, which only one publisher can create. A publisher that loses the claim
    /// (another took that number between its listing and its claim) takes the next number, so
    /// two publishers at once never write into the same version. Then every file, and the
    /// manifest last (create-only too): a version is visible to readers only once complete, and
    /// a claimed version whose publisher died is skipped, its number never reused.
    pub async fn publish(
        &self,
        mut manifest: Manifest,
        files: Vec<(String, Bytes)>,
    ) -> Result<Manifest> {
        let name = manifest.name.clone();
        if !valid_name(&name) {
            return Err(RegistryError::BadRef(name));
        }
        if let Some((file, _)) = files
            .iter()
            .find(|(f, _)| !valid_file_name(f) || f == CLAIM)
        {
            return Err(RegistryError::Manifest {
                path: file.clone(),
                message: "not a usable bundle file name".into(),
            });
        }
        let version = self.claim_version(&name).await?;
        let dir = Self::version_dir(&name, version);
        manifest.files.clear();
        for (file, bytes) in files {
            manifest.files.insert(file.clone(), sha256_hex(&bytes));
            self.store
                .put(
                    &Path::from(format!("{dir}/{file}")),
                    PutPayload::from_bytes(bytes),
                )
                .await?;
        }
        manifest.version = version;
        manifest.created_at =
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| RegistryError::Manifest {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        match self
            .store
            .put_opts(
                &Path::from(format!("{dir}/{MANIFEST}")),
                body.into(),
                create_only(),
            )
            .await
        {
            Ok(_) => Ok(manifest),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(RegistryError::Conflict { name, version })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Claim the next free version number of `name` (see [`Registry::publish`]).
    async fn claim_version(&self, name: &str) -> Result<u64> {
        let mut version = self.highest_version_dir(name).await?.map_or(1, |v| v + 1);
        // Each lost claim means another publisher took that number: give up only after many.
        for _ in 0..CLAIM_ATTEMPTS {
            let claim = Path::from(format!("{}/{CLAIM}", Self::version_dir(name, version)));
            let body = format!(
                "{{\"claimed_at\": \"{}\", \"pid\": {}}}\n",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                std::process::id()
            );
            match self
                .store
                .put_opts(&claim, body.into(), create_only())
                .await
            {
                Ok(_) => return Ok(version),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let listed = self.highest_version_dir(name).await?.unwrap_or(0);
                    version = (version + 1).max(listed + 1);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Conflict {
            name: name.to_string(),
            version,
        })
    }

    /// The highest version directory, complete or not, so numbers are never reused.
    async fn highest_version_dir(&self, name: &str) -> Result<Option<u64>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from(format!("models/{name}/versions"))))
            .await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse::<u64>().ok())
            .max())
    }

    /// Complete versions of a model, ascending.
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>> {
        let prefix = Path::from(format!("models/{name}/versions"));
        let mut out: Vec<u64> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                let parts: Vec<_> = meta.location.parts().collect();
                let n = parts.len();
                Ok((n >= 2 && parts[n - 1].as_ref() == MANIFEST)
                    .then(|| parts[n - 2].as_ref().parse::<u64>().ok())
                    .flatten())
            })
            .try_collect()
            .await?;
        out.sort_unstable();
        Ok(out)
    }

    /// Every model name with at least one version directory.
    pub async fn names(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from("models")))
            .await?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every complete version of every model.
    pub async fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for name in self.names().await? {
            for v in self.versions(&name).await? {
                out.push(self.manifest(&name, v).await?);
            }
        }
        Ok(out)
    }

    /// The manifest of a complete version.
    pub async fn manifest(&self, name: &str, version: u64) -> Result<Manifest> {
        let path = Path::from(format!("{}/{MANIFEST}", Self::version_dir(name, version)));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RegistryError::NotFound(format!("{name}@{version}")));
            }
            Err(e) => return Err(e.into()),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Manifest {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        // `fetch` reads the files of the version the manifest names: it must be this one.
        if m.name != name || m.version != version {
            return Err(RegistryError::Manifest {
                path: path.to_string(),
                message: format!("says it is {}, not {name}@{version}", m.id()),
            });
        }
        Ok(m)
    }

    /// Resolve a reference to the manifest of a complete version.
    pub async fn resolve(&self, r: &ModelRef) -> Result<Manifest> {
        match r {
            ModelRef::Version(name, v) => self.manifest(name, *v).await,
            ModelRef::Latest(name) => match self.versions(name).await?.last() {
                Some(v) => self.manifest(name, *v).await,
                None => Err(RegistryError::NotFound(format!("model `{name}`"))),
            },
            ModelRef::Alias(name, alias) => {
                let v = self
                    .alias(name, alias)
                    .await?
                    .ok_or_else(|| RegistryError::NotFound(format!("{name}@{alias}")))?;
                self.manifest(name, v).await
            }
        }
    }

    /// The version an alias points at, if it is set.
    pub async fn alias(&self, name: &str, alias: &str) -> Result<Option<u64>> {
        let path = Path::from(format!("models/{name}/aliases/{alias}"));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let t: AliasTarget =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Manifest {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        Ok(Some(t.version))
    }

    /// Point an alias at a complete version: one put, so readers see the old or the new target.
    pub async fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<()> {
        if !valid_name(alias) || alias.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RegistryError::BadRef(format!("{name}@{alias}")));
        }
        // Refuses incomplete and missing versions.
        self.manifest(name, version).await?;
        let body = serde_json::to_vec(&AliasTarget {
            version,
            set_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .map_err(|e| RegistryError::Manifest {
            path: alias.to_string(),
            message: e.to_string(),
        })?;
        self.store
            .put(
                &Path::from(format!("models/{name}/aliases/{alias}")),
                body.into(),
            )
            .await?;
        Ok(())
    }

    /// Read every file of a version and check it against the manifest's sha256.
    pub async fn fetch(&self, manifest: &Manifest) -> Result<Bundle> {
        let dir = Self::version_dir(&manifest.name, manifest.version);
        let mut files = BTreeMap::new();
        for (file, expected) in &manifest.files {
            check_name(&dir, file)?;
            let bytes = self
                .store
                .get(&Path::from(format!("{dir}/{file}")))
                .await?
                .bytes()
                .await?;
            check_sum(manifest, file, expected, &bytes)?;
            files.insert(file.clone(), bytes);
        }
        Ok(Bundle {
            manifest: manifest.clone(),
            files,
        })
    }
}

/// The create-only object that claims a version for one publisher ([`Registry::publish`]).
const CLAIM: &str = "claim";

/// Lost claims before [`Registry::publish`] gives up.
const CLAIM_ATTEMPTS: usize = 1000;

/// Put options that refuse to overwrite.
fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    }
}

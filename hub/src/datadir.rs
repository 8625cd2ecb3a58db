//! The data directory: the hub's identity key, the admin token, the store and run-time files.
//!
//! ```text
//! <data_dir>/identity.key   ed25519 secret key, hex, mode 0600
//! <data_dir>/admin.token    bearer token for the admin API, hex, mode 0600
//! <data_dir>/owner.password the web UI owner's password as an argon2id PHC string, mode 0600
//!                           (absent until the owner sets it on the first visit)
//! <data_dir>/store/         the sled database (see store/)
//! <data_dir>/run/api.addr   where the running daemon's API listens (written at start)
//! ```
//! A first run builds all of it in `<data_dir>/.init/` and moves the pieces into place with the
//! identity key last (the data dir itself may be a mount point, as systemd's StateDirectory is,
//! so it is filled in place rather than renamed). A data dir with a `.init/` but no identity is
//! an interrupted first run holding nothing of value, and is started again; any other
//! directory that has some of the pieces but not the rest is damage, reported and never
//! "repaired" by writing over it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use machinomy_core::{PublicKey, SigningKey};

pub const IDENTITY_FILE: &str = "identity.key";
pub const TOKEN_FILE: &str = "admin.token";
pub const STORE_DIR: &str = "store";
pub const RUN_DIR: &str = "run";
pub const API_ADDR_FILE: &str = "api.addr";
pub const OWNER_PASSWORD_FILE: &str = "owner.password";
const INIT_DIR: &str = ".init";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "data dir {dir} has data but no {IDENTITY_FILE}; refusing to create a new identity over it (restore the key, or move the directory away to start afresh)"
    )]
    MissingIdentity { dir: PathBuf },
    #[error(
        "data dir {dir} has an identity but no {STORE_DIR}/; refusing to start with empty books (restore the store, or move the directory away to start afresh)"
    )]
    MissingStore { dir: PathBuf },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("no data dir at {0}; start the hub with `machinomy-hub run` or `machinomy-hub init` first")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot gather randomness: {0}")]
    Random(String),
    #[error("cannot create the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_owned(), source }
}

/// An opened data directory with its keys loaded.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    identity: SigningKey,
    admin_token: String,
}

impl DataDir {
    /// Opens the data dir, creating it on first run. `created` tells whether it was new.
    pub fn open_or_create(root: &Path) -> Result<(DataDir, bool), DataDirError> {
        match fs::metadata(root) {
            Ok(meta) if !meta.is_dir() => Err(DataDirError::NotADirectory(root.to_owned())),
            Ok(_) if interrupted_first_run(root) => Ok((DataDir::create(root)?, true)),
            Ok(_) if !is_empty_dir(root)? => Ok((DataDir::open(root)?, false)),
            Ok(_) => Ok((DataDir::create(root)?, true)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(io(root))?;
                Ok((DataDir::create(root)?, true))
            }
            Err(e) => Err(io(root)(e)),
        }
    }

    /// Opens an existing data dir; never creates anything but a missing admin token.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        match fs::metadata(root) {
            Ok(meta) if !meta.is_dir() => return Err(DataDirError::NotADirectory(root.to_owned())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DataDirError::Missing(root.to_owned())),
            Err(e) => return Err(io(root)(e)),
        }
        let identity_path = root.join(IDENTITY_FILE);
        if !identity_path.exists() {
            return Err(DataDirError::MissingIdentity { dir: root.to_owned() });
        }
        // `create` leaves an initialised store, so an empty store directory is lost books.
        let store = root.join(STORE_DIR);
        if !store.is_dir() || is_empty_dir(&store)? {
            return Err(DataDirError::MissingStore { dir: root.to_owned() });
        }
        let identity = SigningKey::from_bytes(&read_secret::<32>(&identity_path)?);
        let token_path = root.join(TOKEN_FILE);
        let admin_token = if token_path.exists() {
            hex::encode(read_secret::<32>(&token_path)?)
        } else {
            // The token is only an access credential: deleting it is how an owner rotates it.
            let token = random::<32>()?;
            write_secret(&token_path, &token)?;
            hex::encode(token)
        };
        Ok(DataDir { root: root.to_owned(), identity, admin_token })
    }

    /// Fills an empty (or interrupted) data dir: everything is made in `.init/`, then moved in
    /// with the identity last, so no identity ever exists without its store and token.
    fn create(root: &Path) -> Result<DataDir, DataDirError> {
        let staging = root.join(INIT_DIR);
        for leftover in [STORE_DIR, TOKEN_FILE, INIT_DIR] {
            let path = root.join(leftover);
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        fs::DirBuilder::new().mode(0o700).create(&staging).map_err(io(&staging))?;
        let store = staging.join(STORE_DIR);
        fs::DirBuilder::new().mode(0o700).create(&store).map_err(io(&store))?;
        crate::store::initialize(&store)?;
        write_secret(&staging.join(TOKEN_FILE), &random::<32>()?)?;
        write_secret(&staging.join(IDENTITY_FILE), &random::<32>()?)?;
        for piece in [STORE_DIR, TOKEN_FILE, IDENTITY_FILE] {
            fs::rename(staging.join(piece), root.join(piece)).map_err(io(root))?;
        }
        fs::remove_dir(&staging).map_err(io(&staging))?;
        sync_dir(root)?;
        DataDir::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store_path(&self) -> PathBuf {
        self.root.join(STORE_DIR)
    }

    pub fn identity(&self) -> &SigningKey {
        &self.identity
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(self.identity.verifying_key())
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Records where the API listens, for the CLI to find (atomically: write, then rename).
    pub fn write_api_addr(&self, addr: std::net::SocketAddr) -> Result<(), DataDirError> {
        let dir = self.root.join(RUN_DIR);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!("{API_ADDR_FILE}.tmp"));
        fs::write(&tmp, format!("{addr}\n")).map_err(io(&tmp))?;
        fs::rename(&tmp, dir.join(API_ADDR_FILE)).map_err(io(&dir))
    }

    pub fn clear_api_addr(&self) {
        let _ = fs::remove_file(self.root.join(RUN_DIR).join(API_ADDR_FILE));
    }

    /// The owner's password hash (a PHC string), or `None` before the owner has set one.
    pub fn owner_password_hash(&self) -> Result<Option<String>, DataDirError> {
        let path = self.root.join(OWNER_PASSWORD_FILE);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        if !meta.is_file() {
            return Err(DataDirError::Corrupt { path, reason: "is not a regular file".to_owned() });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(DataDirError::TooOpen { path, mode });
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let hash = text.trim();
        if !hash.starts_with('$') || hash.contains(char::is_whitespace) {
            return Err(DataDirError::Corrupt { path, reason: "expected one PHC string ($argon2id$…)".to_owned() });
        }
        Ok(Some(hash.to_owned()))
    }

    /// Stores the owner's password hash unless one is set; `Ok(false)` if one was. The hash is
    /// written and synced under a temporary name, then hard-linked into place: unlike a rename,
    /// a link never replaces, so of two setups at once exactly one wins.
    pub fn set_owner_password_hash(&self, hash: &str) -> Result<bool, DataDirError> {
        let path = self.root.join(OWNER_PASSWORD_FILE);
        let tmp = self.root.join(format!(".{OWNER_PASSWORD_FILE}.{}", hex::encode(random::<8>()?)));
        let linked = write_synced(&tmp, hash).and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.root)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

/// Where a running daemon said it listens, if it is running.
pub fn read_api_addr(root: &Path) -> Option<std::net::SocketAddr> {
    fs::read_to_string(root.join(RUN_DIR).join(API_ADDR_FILE)).ok()?.trim().parse().ok()
}

/// The admin token, for the CLI. Does not create anything.
pub fn read_admin_token(root: &Path) -> Result<String, DataDirError> {
    let path = root.join(TOKEN_FILE);
    if !path.exists() {
        return Err(DataDirError::Missing(root.to_owned()));
    }
    Ok(hex::encode(read_secret::<32>(&path)?))
}

/// A first run that stopped before its identity was moved in: nothing in it was ever used.
fn interrupted_first_run(root: &Path) -> bool {
    root.join(INIT_DIR).is_dir() && !root.join(IDENTITY_FILE).exists()
}

/// Makes the directory's entries (the renames) durable.
fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn is_empty_dir(path: &Path) -> Result<bool, DataDirError> {
    Ok(fs::read_dir(path).map_err(io(path))?.next().is_none())
}

fn random<const N: usize>() -> Result<[u8; N], DataDirError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| DataDirError::Random(e.to_string()))?;
    Ok(bytes)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// A new file (mode 0600) holding `text` and a newline, synced.
fn write_synced(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()
}

fn read_secret<const N: usize>(path: &Path) -> Result<[u8; N], DataDirError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(DataDirError::Corrupt { path: path.to_owned(), reason: "is not a regular file".to_owned() });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::TooOpen { path: path.to_owned(), mode });
    }
    let text =
        fs::read_to_string(path).map_err(|e| DataDirError::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| DataDirError::Corrupt {
        path: path.to_owned(),
        reason: format!("expected {} hex characters", N * 2),
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_password_hash_is_set_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::open_or_create(&dir.path().join("hub")).unwrap();
        assert_eq!(data.owner_password_hash().unwrap(), None);
        assert!(data.set_owner_password_hash("$argon2id$v=19$first").unwrap());
        assert!(!data.set_owner_password_hash("$argon2id$v=19$second").unwrap(), "never replaced");
        assert_eq!(data.owner_password_hash().unwrap().as_deref(), Some("$argon2id$v=19$first"));
        let path = data.root().join(OWNER_PASSWORD_FILE);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(data.root())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".owner"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files are removed: {leftovers:?}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(data.owner_password_hash(), Err(DataDirError::TooOpen { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a hash\n").unwrap();
        assert!(matches!(data.owner_password_hash(), Err(DataDirError::Corrupt { .. })));
    }

    #[test]
    fn first_run_creates_keys_with_mode_0600_and_reopens_the_same_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let (first, created) = DataDir::open_or_create(&root).unwrap();
        assert!(created);
        for file in [IDENTITY_FILE, TOKEN_FILE] {
            let mode = fs::metadata(root.join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let (again, created) = DataDir::open_or_create(&root).unwrap();
        assert!(!created);
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.admin_token(), again.admin_token());
    }

    #[test]
    fn corrupt_identity_is_an_error_and_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        DataDir::open_or_create(&root).unwrap();
        let key = root.join(IDENTITY_FILE);
        fs::write(&key, "garbage").unwrap();
        let err = DataDir::open_or_create(&root).unwrap_err();
        assert!(matches!(err, DataDirError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read_to_string(&key).unwrap(), "garbage");
    }

    #[test]
    fn missing_identity_with_data_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        DataDir::open_or_create(&root).unwrap();
        fs::remove_file(root.join(IDENTITY_FILE)).unwrap();
        assert!(matches!(DataDir::open_or_create(&root), Err(DataDirError::MissingIdentity { .. })));
        assert!(!root.join(IDENTITY_FILE).exists());
    }

    #[test]
    fn world_readable_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        DataDir::open_or_create(&root).unwrap();
        fs::set_permissions(root.join(IDENTITY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(DataDir::open(&root), Err(DataDirError::TooOpen { .. })));
    }

    #[test]
    fn a_file_where_the_data_dir_should_be_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        fs::write(&root, "x").unwrap();
        assert!(matches!(DataDir::open_or_create(&root), Err(DataDirError::NotADirectory(_))));
        assert_eq!(fs::read_to_string(&root).unwrap(), "x");
    }

    #[test]
    fn an_interrupted_first_run_is_started_again_but_an_emptied_store_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        fs::create_dir_all(root.join(INIT_DIR).join(STORE_DIR)).unwrap();
        fs::create_dir_all(root.join(STORE_DIR)).unwrap();
        let (dir, created) = DataDir::open_or_create(&root).unwrap();
        assert!(created);
        assert!(!root.join(INIT_DIR).exists());
        let identity = dir.public_key();
        drop(dir);
        for entry in fs::read_dir(root.join(STORE_DIR)).unwrap() {
            let path = entry.unwrap().path();
            fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path)).unwrap();
        }
        assert!(matches!(DataDir::open_or_create(&root), Err(DataDirError::MissingStore { .. })));
        assert_eq!(identity_in(&root), identity, "the identity is never replaced");
    }

    fn identity_in(root: &Path) -> PublicKey {
        PublicKey::from(SigningKey::from_bytes(&read_secret::<32>(&root.join(IDENTITY_FILE)).unwrap()).verifying_key())
    }

    #[test]
    fn a_directory_where_the_key_should_be_is_corrupt_not_too_open() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        DataDir::open_or_create(&root).unwrap();
        fs::remove_file(root.join(IDENTITY_FILE)).unwrap();
        fs::create_dir(root.join(IDENTITY_FILE)).unwrap();
        assert!(matches!(DataDir::open(&root), Err(DataDirError::Corrupt { .. })));
    }

    #[test]
    fn an_empty_directory_is_initialised_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, created) = DataDir::open_or_create(tmp.path()).unwrap();
        assert!(created);
        assert!(tmp.path().join(IDENTITY_FILE).exists());
    }
}

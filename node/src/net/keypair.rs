//! The node's ed25519 identity on disk (libp2p protobuf encoding): created
//! once with mode 0600 (written to a temporary file, made durable, then
//! renamed, so a crash never leaves half a key), then reused so the peer id
//! survives restarts.
//!
//! A new key is used at once; making it durable (an fsync, which takes a
//! busy disk hundreds of milliseconds) finishes on a thread of its own, which
//! the network waits for when it stops. A box killed before that starts its
//! next life with a new peer id, which the cluster takes like any address
//! change (the node id is what identifies a node).

use super::NetError;
use libp2p::identity::Keypair;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// The key, and for a new one the thread still making it durable.
pub(crate) fn load_or_create(path: &Path) -> Result<(Keypair, Option<JoinHandle<()>>), NetError> {
    let err = |reason: String| NetError::Keypair {
        path: path.to_path_buf(),
        reason,
    };
    match fs::read(path) {
        Ok(bytes) => {
            if let Ok(meta) = fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "identity key is readable by others (mode {mode:o}): chmod 600 it"
                    );
                }
            }
            let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                err(format!(
                    "not a valid identity key ({e}); restore it from a backup, or delete it \
                     to give this node a new peer id"
                ))
            })?;
            Ok((key, None))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map_err(err),
        Err(e) => Err(err(format!("cannot read it: {e}"))),
    }
}

fn create(path: &Path) -> Result<(Keypair, Option<JoinHandle<()>>), String> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| format!("cannot encode a new key: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Written now (an unwritable directory is an error at once), made
    // durable and put in place in the background.
    let write = || -> std::io::Result<fs::File> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        Ok(f)
    };
    let file = write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write a new key: {e}")
    })?;
    tracing::info!(
        path = %path.display(),
        peer = %keypair.public().to_peer_id(),
        "created a new node identity"
    );
    let path = path.to_path_buf();
    let persist = move || {
        let done = file.sync_all().and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = done {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot save the node identity: this node gets a new peer id when it restarts"
            );
        }
    };
    let handle = std::thread::Builder::new()
        .name("key-writer".into())
        .spawn(persist)
        .map_err(|e| format!("cannot save a new key: {e}"))?;
    Ok((keypair, Some(handle)))
}

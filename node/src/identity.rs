//! A node's libp2p identity, kept in its data directory so its peer id survives restarts.

use std::io;
use std::path::Path;

use libp2p::identity::Keypair;

/// The file in a data directory that holds the node's key.
pub const IDENTITY_FILE: &str = "identity.key";

/// Loads the ed25519 key in `dir/identity.key`, or makes one and writes it there (readable by the
/// owner only) if there is none.
pub fn load_or_create(dir: &Path) -> io::Result<Keypair> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a libp2p key: {error}", path.display()),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|error| io::Error::other(format!("encoding a new key: {error}")))?;
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(keypair)
        }
        Err(error) => Err(io::Error::new(
            error.kind(),
            format!("reading {}: {error}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_survives_a_restart_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public(), second.public());
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        let error = load_or_create(dir.path()).unwrap_err();
        assert!(error.to_string().contains("is not a libp2p key"), "{error}");
    }
}

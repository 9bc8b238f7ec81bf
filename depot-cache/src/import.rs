//! Importing a repository directory (as `origin` writes it) into a store under mesh names, whole:
//! how `depot-cache import-repo` fills a cache by hand ([`node::import`] does the work).

use std::path::Path;

use node::storage::{Index, Storage};
use node::store::BlobStore;
use proto::BlobId;

/// Imports every file of `repo`'s `metadata/`, `targets/` and `deltas/` into `store`, each named
/// `<name>/<path in the repository>` (a name already taken now names the new file). Returns
/// each file's id and name, in path order.
pub fn import_repo<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    name: &str,
    repo: &Path,
) -> anyhow::Result<Vec<(BlobId, String)>> {
    Ok(node::import::import_repo(
        store,
        name,
        repo,
        node::import::Import::All,
    )?)
}

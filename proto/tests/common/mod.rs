//! Helpers shared by proto's integration tests.

use std::collections::BTreeMap;

use proto::tuf::LocalStore;

/// Trusted TUF metadata in memory.
#[derive(Default)]
pub(crate) struct MemStore(pub(crate) BTreeMap<String, Vec<u8>>);

impl LocalStore for MemStore {
    fn load(&self, role: &str) -> Option<Vec<u8>> {
        self.0.get(role).cloned()
    }

    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), String> {
        self.0.insert(role.to_string(), bytes.to_vec());
        Ok(())
    }
}

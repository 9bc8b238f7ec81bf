//! The metadata of a TUF repository, parsed from TUF's JSON with errors that name the file and
//! the field. Parsing checks shape and types only; trust is decided by [`super::TrustedSet`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use sha2::Digest;

use super::canonical::to_canonical;
use super::{Time, TufError};

/// The major version of the TUF specification this client implements.
const SPEC_MAJOR: &str = "1";

/// One role's metadata as it came: what was signed, its canonical bytes and the signatures.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    /// The parsed `signed` part.
    pub signed: T,
    canonical: Vec<u8>,
    /// Key id → signature (hex), as listed (key ids are unique).
    signatures: BTreeMap<String, String>,
}

pub use super::keys::Key;

/// The keys that may sign for a role, and how many must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKeys {
    /// Key ids, unique.
    pub keyids: Vec<String>,
    /// Valid signatures from distinct keys needed, at least 1.
    pub threshold: u64,
}

/// What every role's `signed` part carries.
pub trait Role: Sized {
    /// Its `_type`.
    const TYPE: &'static str;
    /// Parses the `signed` object (after `_type`, `spec_version`, `version` and `expires`).
    fn parse(fields: &Fields<'_>, common: Common) -> Result<Self, TufError>;
    /// Its common fields.
    fn common(&self) -> &Common;
    /// Its version.
    fn version(&self) -> u64 {
        self.common().version
    }
    /// When it expires.
    fn expires(&self) -> Time {
        self.common().expires
    }
}

/// The fields every role has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Common {
    /// `version`, at least 1.
    pub version: u64,
    /// `expires`.
    pub expires: Time,
}

/// `root`: the keys of every top-level role.
#[derive(Debug, Clone)]
pub struct Root {
    /// Common fields.
    pub common: Common,
    /// Whether metadata and targets are fetched under versioned / hashed names.
    pub consistent_snapshot: bool,
    /// Key id → key.
    pub keys: BTreeMap<String, Key>,
    /// `root`, `targets`, `snapshot`, `timestamp` → their keys.
    pub roles: BTreeMap<String, RoleKeys>,
}

/// A file that other metadata pins: its version and, optionally, length and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFile {
    /// `version`.
    pub version: u64,
    /// `length`, when given.
    pub length: Option<u64>,
    /// Algorithm → hex digest, possibly empty.
    pub hashes: BTreeMap<String, String>,
}

/// `timestamp`: pins the current snapshot.
#[derive(Debug, Clone)]
pub struct Timestamp {
    /// Common fields.
    pub common: Common,
    /// `meta["snapshot.json"]`.
    pub snapshot: MetaFile,
}

/// `snapshot`: pins the version of every targets role.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Common fields.
    pub common: Common,
    /// `<role>.json` → its pin.
    pub meta: BTreeMap<String, MetaFile>,
}

/// One target: a file a client may download, with its length and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetFile {
    /// Its length in bytes.
    pub length: u64,
    /// Algorithm → hex digest, at least one.
    pub hashes: BTreeMap<String, String>,
    /// `custom`, signed with the rest (BLAKE3, hardware id, ...).
    pub custom: Option<Value>,
}

/// A role that a targets role delegates to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegatedRole {
    /// Its name (the metadata file is `<name>.json`).
    pub name: String,
    /// Its keys and threshold.
    pub keys: RoleKeys,
    /// When it matches a target, no later delegation is searched.
    pub terminating: bool,
    /// The target paths it may sign for, as shell-style patterns per `/` segment.
    pub paths: Option<Vec<String>>,
    /// Or: prefixes of the hex SHA-256 of the target path.
    pub path_hash_prefixes: Option<Vec<String>>,
}

/// `delegations` of a targets role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegations {
    /// Key id → key, for the delegated roles.
    pub keys: BTreeMap<String, Key>,
    /// In order of precedence.
    pub roles: Vec<DelegatedRole>,
}

/// `targets` (top-level or delegated).
#[derive(Debug, Clone)]
pub struct Targets {
    /// Common fields.
    pub common: Common,
    /// Target path → file.
    pub targets: BTreeMap<String, TargetFile>,
    /// Its delegations, if any.
    pub delegations: Option<Delegations>,
}

impl<T: Role> Signed<T> {
    /// Parses one metadata file. `file` names it in errors.
    pub fn from_bytes(bytes: &[u8], file: &str) -> Result<Self, TufError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|error| TufError::Deserialization {
                file: file.to_string(),
                detail: format!("not JSON: {error}"),
            })?;
        let top = Fields::root(file, &value)?;
        let signed_value = top.field("signed")?;
        let signed_fields = top.object("signed")?;
        let mut signatures = BTreeMap::new();
        for (index, item) in top.array("signatures")?.iter().enumerate() {
            let path = format!("signatures[{index}]");
            let entry = top.nested(&path, item)?;
            let keyid = entry.string("keyid")?.to_string();
            let sig = entry.string("sig")?.to_string();
            if signatures.insert(keyid.clone(), sig).is_some() {
                return Err(top.error(&path, format!("a second signature by key id {keyid}")));
            }
        }
        let kind = signed_fields.string("_type")?;
        if kind != T::TYPE {
            return Err(
                signed_fields.error("_type", format!("is {kind:?}, expected {:?}", T::TYPE))
            );
        }
        let spec = signed_fields.string("spec_version")?;
        if spec.split('.').next() != Some(SPEC_MAJOR) || spec.split('.').count() < 2 {
            return Err(signed_fields.error(
                "spec_version",
                format!("{spec:?} is not a 1.x specification version"),
            ));
        }
        let version = signed_fields.u64("version")?;
        if version == 0 {
            return Err(signed_fields.error("version", "must be at least 1".into()));
        }
        let expires_text = signed_fields.string("expires")?;
        let expires = Time::parse(expires_text)
            .map_err(|error| signed_fields.error("expires", error.to_string()))?;
        let signed = T::parse(&signed_fields, Common { version, expires })?;
        let canonical = to_canonical(signed_value).map_err(|error| TufError::Deserialization {
            file: file.to_string(),
            detail: error.to_string(),
        })?;
        Ok(Self {
            signed,
            canonical,
            signatures,
        })
    }

    /// Checks that at least `role.threshold` distinct keys of `role`, looked up in `keys`, signed
    /// the canonical bytes. Unknown key ids and bad signatures are ignored, as the spec says.
    pub fn verify(
        &self,
        role_name: &str,
        keys: &BTreeMap<String, Key>,
        role: &RoleKeys,
    ) -> Result<(), TufError> {
        let mut valid = 0usize;
        for keyid in &role.keyids {
            let (Some(key), Some(sig)) = (keys.get(keyid), self.signatures.get(keyid)) else {
                continue;
            };
            let Ok(bytes) = hex::decode(sig) else {
                continue;
            };
            if key.verify(&self.canonical, &bytes) {
                valid += 1;
            }
        }
        if (valid as u64) < role.threshold {
            return Err(TufError::Unsigned {
                role: role_name.to_string(),
                valid,
                threshold: role.threshold,
            });
        }
        Ok(())
    }

    /// The exact bytes the signatures cover.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }
}

impl Role for Root {
    const TYPE: &'static str = "root";

    fn parse(fields: &Fields<'_>, common: Common) -> Result<Self, TufError> {
        let consistent_snapshot = match fields.optional("consistent_snapshot") {
            None => false,
            Some(Value::Bool(value)) => *value,
            Some(_) => return Err(fields.error("consistent_snapshot", "must be a boolean".into())),
        };
        let keys = parse_keys(&fields.nested("keys", fields.field("keys")?)?)?;
        let role_fields = fields.nested("roles", fields.field("roles")?)?;
        let mut roles = BTreeMap::new();
        for (name, value) in role_fields.map {
            roles.insert(
                name.clone(),
                parse_role_keys(&role_fields.nested(name, value)?)?,
            );
        }
        for name in ["root", "targets", "snapshot", "timestamp"] {
            if !roles.contains_key(name) {
                return Err(fields.error("roles", format!("has no {name:?} role")));
            }
        }
        Ok(Self {
            common,
            consistent_snapshot,
            keys,
            roles,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";

    fn parse(fields: &Fields<'_>, common: Common) -> Result<Self, TufError> {
        let meta = fields.nested("meta", fields.field("meta")?)?;
        if meta.map.len() != 1 {
            return Err(fields.error("meta", "must list snapshot.json and nothing else".into()));
        }
        let snapshot =
            parse_meta_file(&meta.nested("snapshot.json", meta.field("snapshot.json")?)?)?;
        Ok(Self { common, snapshot })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";

    fn parse(fields: &Fields<'_>, common: Common) -> Result<Self, TufError> {
        let meta_fields = fields.nested("meta", fields.field("meta")?)?;
        let mut meta = BTreeMap::new();
        for (name, value) in meta_fields.map {
            meta.insert(
                name.clone(),
                parse_meta_file(&meta_fields.nested(name, value)?)?,
            );
        }
        Ok(Self { common, meta })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

impl Role for Targets {
    const TYPE: &'static str = "targets";

    fn parse(fields: &Fields<'_>, common: Common) -> Result<Self, TufError> {
        let target_fields = fields.nested("targets", fields.field("targets")?)?;
        let mut targets = BTreeMap::new();
        for (path, value) in target_fields.map {
            let file = target_fields.nested(path, value)?;
            let length = file.u64("length")?;
            let hashes = parse_hashes(&file, true)?;
            let custom = file.optional("custom").cloned();
            targets.insert(
                path.clone(),
                TargetFile {
                    length,
                    hashes,
                    custom,
                },
            );
        }
        let delegations = match fields.optional("delegations") {
            None => None,
            Some(value) => Some(parse_delegations(&fields.nested("delegations", value)?)?),
        };
        Ok(Self {
            common,
            targets,
            delegations,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

impl MetaFile {
    /// Checks `data` against the pinned length and hashes (those given).
    pub fn verify(&self, file: &str, data: &[u8]) -> Result<(), TufError> {
        verify_length_and_hashes(file, data, self.length, &self.hashes)
    }
}

impl TargetFile {
    /// The BLAKE3 of the target from `custom.blake3`, which is also its blob id on the mesh:
    /// `None` when absent or not 64 hex digits.
    pub fn blake3(&self) -> Option<crate::BlobId> {
        self.custom
            .as_ref()
            .and_then(|custom| custom["blake3"].as_str())
            .and_then(|text| text.parse().ok())
    }

    /// Checks `data` against the target's length and every hash.
    pub fn verify(&self, file: &str, data: &[u8]) -> Result<(), TufError> {
        verify_length_and_hashes(file, data, Some(self.length), &self.hashes)
    }
}

impl DelegatedRole {
    /// Whether this role may sign for `target` (TUF 1.0.x §5.6.7.2.4).
    pub fn is_delegated_path(&self, target: &str) -> bool {
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = hex::encode(sha2::Sha256::digest(target.as_bytes()));
            return prefixes
                .iter()
                .any(|prefix| digest.starts_with(prefix.as_str()));
        }
        self.paths.as_ref().is_some_and(|patterns| {
            patterns.iter().any(|pattern| {
                let target_parts: Vec<&str> = target.split('/').collect();
                let pattern_parts: Vec<&str> = pattern.split('/').collect();
                target_parts.len() == pattern_parts.len()
                    && target_parts
                        .iter()
                        .zip(&pattern_parts)
                        .all(|(part, glob)| glob_match(glob.as_bytes(), part.as_bytes()))
            })
        })
    }
}

impl Delegations {
    /// The delegated roles that may sign for `target`, in order, stopping after the first
    /// terminating one; each with its `terminating` flag.
    pub fn roles_for_target<'a>(
        &'a self,
        target: &'a str,
    ) -> impl Iterator<Item = &'a DelegatedRole> {
        let mut done = false;
        self.roles.iter().filter(move |role| {
            if done || !role.is_delegated_path(target) {
                return false;
            }
            done = role.terminating;
            true
        })
    }
}

/// Shell-style matching of one path segment, as Python's `fnmatch` does it: `*` any run of
/// characters, `?` one, `[abc]`, `[a-z]`, `[!x]` a class; anything else itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') => (0..=text.len()).any(|skip| glob_match(&pattern[1..], &text[skip..])),
        Some(b'?') => !text.is_empty() && glob_match(&pattern[1..], &text[1..]),
        Some(b'[') => match (class_end(pattern), text.first()) {
            (Some(end), Some(&c)) => {
                class_contains(&pattern[1..end], c) && glob_match(&pattern[end + 1..], &text[1..])
            }
            (Some(_), None) => false,
            // An unclosed `[` is a literal, as in fnmatch.
            (None, first) => first == Some(&b'[') && glob_match(&pattern[1..], &text[1..]),
        },
        Some(&literal) => text.first() == Some(&literal) && glob_match(&pattern[1..], &text[1..]),
    }
}

/// Where the class that starts at `pattern[0] == b'['` ends (the index of its `]`).
fn class_end(pattern: &[u8]) -> Option<usize> {
    let mut at = 1;
    if pattern.get(at) == Some(&b'!') {
        at += 1;
    }
    if pattern.get(at) == Some(&b']') {
        at += 1;
    }
    pattern[at..]
        .iter()
        .position(|&b| b == b']')
        .map(|i| at + i)
}

fn class_contains(class: &[u8], c: u8) -> bool {
    let (negate, class) = match class.first() {
        Some(b'!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut found = false;
    let mut at = 0;
    while at < class.len() {
        if at + 2 < class.len() && class[at + 1] == b'-' {
            found |= class[at] <= c && c <= class[at + 2];
            at += 3;
        } else {
            found |= class[at] == c;
            at += 1;
        }
    }
    found != negate
}

/// Checks `data` against a length (if given) and every hash listed.
pub fn verify_length_and_hashes(
    file: &str,
    data: &[u8],
    length: Option<u64>,
    hashes: &BTreeMap<String, String>,
) -> Result<(), TufError> {
    let mut check = HashCheck::new(file, hashes)?;
    check.update(data);
    check.finish(length)
}

/// The length and hash check of [`verify_length_and_hashes`] over bytes that arrive in pieces
/// (a target image written to disk as it is exported), so that no image has to fit in memory.
#[derive(Debug, Clone)]
pub struct HashCheck<'a> {
    file: &'a str,
    hashes: &'a BTreeMap<String, String>,
    length: u64,
    sha256: Option<sha2::Sha256>,
    sha512: Option<sha2::Sha512>,
}

impl<'a> HashCheck<'a> {
    /// A check of `file` against `hashes`. An algorithm other than sha256 and sha512 is an error
    /// (as in python-tuf): a hash that cannot be checked must not pass.
    pub fn new(file: &'a str, hashes: &'a BTreeMap<String, String>) -> Result<Self, TufError> {
        let mut check = Self {
            file,
            hashes,
            length: 0,
            sha256: None,
            sha512: None,
        };
        for algorithm in hashes.keys() {
            match algorithm.as_str() {
                "sha256" => check.sha256 = Some(sha2::Sha256::new()),
                "sha512" => check.sha512 = Some(sha2::Sha512::new()),
                other => {
                    return Err(check.mismatch(format!("unsupported hash algorithm {other:?}")));
                }
            }
        }
        Ok(check)
    }

    fn mismatch(&self, detail: String) -> TufError {
        TufError::LengthOrHashMismatch {
            file: self.file.to_string(),
            detail,
        }
    }

    /// Adds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.length += data.len() as u64;
        if let Some(hasher) = &mut self.sha256 {
            hasher.update(data);
        }
        if let Some(hasher) = &mut self.sha512 {
            hasher.update(data);
        }
    }

    /// Checks what was added against `length` (if given) and every hash.
    pub fn finish(self, length: Option<u64>) -> Result<(), TufError> {
        if let Some(length) = length {
            if self.length != length {
                return Err(self.mismatch(format!("{} bytes, expected {length}", self.length)));
            }
        }
        let actual: BTreeMap<&str, String> = [
            (
                "sha256",
                self.sha256.clone().map(|h| hex::encode(h.finalize())),
            ),
            (
                "sha512",
                self.sha512.clone().map(|h| hex::encode(h.finalize())),
            ),
        ]
        .into_iter()
        .filter_map(|(algorithm, digest)| Some((algorithm, digest?)))
        .collect();
        for (algorithm, expected) in self.hashes {
            let Some(actual) = actual.get(algorithm.as_str()) else {
                return Err(self.mismatch(format!("unsupported hash algorithm {algorithm:?}")));
            };
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(self.mismatch(format!("{algorithm} is {actual}, expected {expected}")));
            }
        }
        Ok(())
    }
}

fn parse_keys(fields: &Fields<'_>) -> Result<BTreeMap<String, Key>, TufError> {
    let mut keys = BTreeMap::new();
    for (keyid, value) in fields.map {
        let key = fields.nested(keyid, value)?;
        let keytype = key.string("keytype")?;
        let scheme = key.string("scheme")?;
        let keyval = key.nested("keyval", key.field("keyval")?)?;
        let parsed = if Key::is_supported(keytype, scheme) {
            Key::parse(keytype, scheme, keyval.string("public")?)
                .map_err(|why| keyval.error("public", why))?
        } else {
            // Whatever its keyval holds: it never counts.
            Key::Unsupported {
                keytype: keytype.to_string(),
                scheme: scheme.to_string(),
            }
        };
        keys.insert(keyid.clone(), parsed);
    }
    Ok(keys)
}

fn parse_role_keys(fields: &Fields<'_>) -> Result<RoleKeys, TufError> {
    let mut keyids = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, item) in fields.array("keyids")?.iter().enumerate() {
        let Value::String(keyid) = item else {
            return Err(fields.error(&format!("keyids[{index}]"), "must be a string".into()));
        };
        if !seen.insert(keyid.clone()) {
            return Err(fields.error("keyids", format!("lists {keyid} twice")));
        }
        keyids.push(keyid.clone());
    }
    let threshold = fields.u64("threshold")?;
    if threshold == 0 {
        return Err(fields.error("threshold", "must be at least 1".into()));
    }
    Ok(RoleKeys { keyids, threshold })
}

fn parse_meta_file(fields: &Fields<'_>) -> Result<MetaFile, TufError> {
    let version = fields.u64("version")?;
    if version == 0 {
        return Err(fields.error("version", "must be at least 1".into()));
    }
    let length = match fields.optional("length") {
        None => None,
        Some(_) => Some(fields.u64("length")?),
    };
    let hashes = parse_hashes(fields, false)?;
    Ok(MetaFile {
        version,
        length,
        hashes,
    })
}

fn parse_hashes(fields: &Fields<'_>, required: bool) -> Result<BTreeMap<String, String>, TufError> {
    let value = match fields.optional("hashes") {
        None if required => return Err(fields.error("hashes", "is missing".into())),
        None => return Ok(BTreeMap::new()),
        Some(value) => value,
    };
    let hash_fields = fields.nested("hashes", value)?;
    if hash_fields.map.is_empty() {
        return Err(fields.error("hashes", "is empty".into()));
    }
    let mut hashes = BTreeMap::new();
    for name in hash_fields.map.keys() {
        hashes.insert(name.clone(), hash_fields.string(name)?.to_string());
    }
    Ok(hashes)
}

fn parse_delegations(fields: &Fields<'_>) -> Result<Delegations, TufError> {
    let keys = parse_keys(&fields.nested("keys", fields.field("keys")?)?)?;
    let mut roles = Vec::new();
    let mut names = BTreeSet::new();
    for (index, item) in fields.array("roles")?.iter().enumerate() {
        let role = fields.nested(&format!("roles[{index}]"), item)?;
        let name = role.string("name")?.to_string();
        if !names.insert(name.clone()) {
            return Err(role.error("name", format!("{name:?} is delegated twice")));
        }
        let keys = parse_role_keys(&role)?;
        let terminating = match role.optional("terminating") {
            None => false,
            Some(Value::Bool(value)) => *value,
            Some(_) => return Err(role.error("terminating", "must be a boolean".into())),
        };
        let strings = |field: &str| -> Result<Option<Vec<String>>, TufError> {
            let Some(_) = role.optional(field) else {
                return Ok(None);
            };
            role.array(field)?
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    _ => Err(role.error(&format!("{field}[{i}]"), "must be a string".into())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let paths = strings("paths")?;
        let path_hash_prefixes = strings("path_hash_prefixes")?;
        if paths.is_some() == path_hash_prefixes.is_some() {
            return Err(role.error(
                "paths",
                "exactly one of paths and path_hash_prefixes must be given".into(),
            ));
        }
        roles.push(DelegatedRole {
            name,
            keys,
            terminating,
            paths,
            path_hash_prefixes,
        });
    }
    Ok(Delegations { keys, roles })
}

/// A JSON object being read, with its file and path for errors.
#[derive(Debug)]
pub struct Fields<'a> {
    file: &'a str,
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn root(file: &'a str, value: &'a Value) -> Result<Self, TufError> {
        match value {
            Value::Object(map) => Ok(Self {
                file,
                path: String::new(),
                map,
            }),
            _ => Err(TufError::Deserialization {
                file: file.to_string(),
                detail: "the top level must be an object".into(),
            }),
        }
    }

    fn full(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_string()
        } else if field.starts_with('[') {
            format!("{}{field}", self.path)
        } else {
            format!("{}.{field}", self.path)
        }
    }

    /// An error about `field` of this object.
    pub fn error(&self, field: &str, detail: String) -> TufError {
        TufError::Deserialization {
            file: self.file.to_string(),
            detail: format!("field {}: {detail}", self.full(field)),
        }
    }

    fn nested(&self, field: &str, value: &'a Value) -> Result<Fields<'a>, TufError> {
        match value {
            Value::Object(map) => Ok(Fields {
                file: self.file,
                path: self.full(field),
                map,
            }),
            _ => Err(self.error(field, "must be an object".into())),
        }
    }

    fn optional(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field)
    }

    fn field(&self, field: &str) -> Result<&'a Value, TufError> {
        self.map
            .get(field)
            .ok_or_else(|| self.error(field, "is missing".into()))
    }

    fn object(&self, field: &str) -> Result<Fields<'a>, TufError> {
        self.nested(field, self.field(field)?)
    }

    fn string(&self, field: &str) -> Result<&'a str, TufError> {
        match self.field(field)? {
            Value::String(text) => Ok(text),
            _ => Err(self.error(field, "must be a string".into())),
        }
    }

    fn u64(&self, field: &str) -> Result<u64, TufError> {
        self.field(field)?
            .as_u64()
            .ok_or_else(|| self.error(field, "must be a non-negative integer".into()))
    }

    fn array(&self, field: &str) -> Result<&'a Vec<Value>, TufError> {
        match self.field(field)? {
            Value::Array(items) => Ok(items),
            _ => Err(self.error(field, "must be an array".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_one_segment_like_fnmatch() {
        let role = |pattern: &str| DelegatedRole {
            name: "r".into(),
            keys: RoleKeys {
                keyids: vec![],
                threshold: 1,
            },
            terminating: false,
            paths: Some(vec![pattern.into()]),
            path_hash_prefixes: None,
        };
        assert!(role("ecu/*").is_delegated_path("ecu/brake-1.2.bin"));
        assert!(!role("ecu/*").is_delegated_path("ecu/sub/brake.bin"));
        assert!(!role("ecu/*").is_delegated_path("depot/ecu.bin"));
        assert!(role("*/fw-?.bin").is_delegated_path("a/fw-1.bin"));
        assert!(!role("*/fw-?.bin").is_delegated_path("a/fw-10.bin"));
        assert!(role("ecu/[a-c]*").is_delegated_path("ecu/brake"));
        assert!(!role("ecu/[!a-c]*").is_delegated_path("ecu/brake"));
        assert!(role("x[").is_delegated_path("x["));
        assert!(role("*").is_delegated_path("anything"));
        assert!(!role("*").is_delegated_path("a/b"));
    }

    #[test]
    fn malformed_metadata_names_file_and_field() {
        let cases: &[(&str, &str)] = &[
            (r#"[1]"#, "top level"),
            (r#"{"signed": {}}"#, "signatures"),
            (
                r#"{"signatures": [], "signed": {"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": "2030-01-01T00:00:00Z", "targets": {}}}"#,
                "_type",
            ),
            (
                r#"{"signatures": [], "signed": {"_type": "root", "spec_version": "1.0.31", "version": "1", "expires": "2030-01-01T00:00:00Z"}}"#,
                "field signed.version",
            ),
            (
                r#"{"signatures": [], "signed": {"_type": "root", "spec_version": "2.0.0", "version": 1, "expires": "2030-01-01T00:00:00Z"}}"#,
                "spec_version",
            ),
            (
                r#"{"signatures": [], "signed": {"_type": "root", "spec_version": "1.0.31", "version": 1, "expires": "soon"}}"#,
                "expires",
            ),
            (
                r#"{"signatures": [], "signed": {"_type": "root", "spec_version": "1.0.31", "version": 1, "expires": "2030-01-01T00:00:00Z", "keys": {"k": {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "zz"}}}, "roles": {}}}"#,
                "keys.k.keyval.public",
            ),
            (
                r#"{"signatures": [{"keyid": "a", "sig": "00"}, {"keyid": "a", "sig": "11"}], "signed": {}}"#,
                "second signature",
            ),
        ];
        for (json, needle) in cases {
            let error = Signed::<Root>::from_bytes(json.as_bytes(), "root.json").unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("root.json"), "{text}");
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }
}

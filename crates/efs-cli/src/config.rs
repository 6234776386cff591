//! Where the client keeps its state, and the files themselves: `config.toml` (the remotes),
//! `tokens/NAME.json` (cached tokens), `history` (the shell's), and the default key.
//!
//! The configuration directory is `$EFS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/efs`, else
//! `~/.config/efs`. Everything in it is written atomically (temporary file, fsync, rename)
//! with mode 0600, inside a directory of mode 0700: tokens are bearer credentials.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use efs_client::TokenInfo;
use serde::{Deserialize, Serialize};

/// The configuration directory and the paths inside it.
#[derive(Clone, Debug)]
pub(crate) struct Dirs {
    pub config: PathBuf,
}

impl Dirs {
    /// Resolves the configuration directory from the environment (it need not exist yet).
    pub fn from_env() -> Result<Dirs> {
        let config = if let Some(d) = non_empty_env("EFS_CONFIG_DIR") {
            PathBuf::from(d)
        } else if let Some(d) = non_empty_env("XDG_CONFIG_HOME") {
            PathBuf::from(d).join("efs")
        } else {
            home_dir()?.join(".config").join("efs")
        };
        Ok(Dirs { config })
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }

    pub fn token_file(&self, remote: &str) -> PathBuf {
        self.config.join("tokens").join(format!("{remote}.json"))
    }

    pub fn history_file(&self) -> PathBuf {
        self.config.join("history")
    }

    /// Where `efs keygen` writes by default, and the first default of `remote add --key`.
    pub fn default_key(&self) -> PathBuf {
        self.config.join("id_ed25519")
    }
}

/// The base of per-user caches: `$XDG_CACHE_HOME`, else `~/.cache`.
pub(crate) fn cache_home() -> Result<PathBuf> {
    match non_empty_env("XDG_CACHE_HOME") {
        Some(d) => Ok(PathBuf::from(d)),
        None => Ok(home_dir()?.join(".cache")),
    }
}

pub(crate) fn home_dir() -> Result<PathBuf> {
    non_empty_env("HOME")
        .map(PathBuf::from)
        .context("HOME is not set: set EFS_CONFIG_DIR to choose where efs keeps its configuration")
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The server URL `arg` as a remote keeps it, `https://HOST[:PORT]` (the scheme in lower
/// case, no trailing slash), or what is wrong with it. The client puts its API paths (`/_efs/…`,
/// the file paths) right after it, so anything more than the host would be sent along: a
/// path (`https://h:8443/patients`, where `patients` is the filesystem, chosen with `--fs`)
/// made every login "refused" instead of this error.
pub(crate) fn server_url(arg: &str) -> std::result::Result<String, String> {
    let Some(rest) = arg
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &arg[8..])
    else {
        return Err(format!("the URL must start with https:// (got '{arg}')"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, after) = rest.split_at(end);
    if host.is_empty() {
        return Err(format!("the URL '{arg}' names no host"));
    }
    if host.contains('@') {
        return Err(format!(
            "the URL '{arg}' has a user name in it: the user is given with --user"
        ));
    }
    check_host_port(arg, host)?;
    if !after.trim_end_matches('/').is_empty() {
        let what = if after.contains('?') {
            "a query"
        } else if after.contains('#') {
            "a fragment"
        } else {
            "a path"
        };
        return Err(format!(
            "the URL '{arg}' has {what} ({after}): a remote is a whole server, https://HOST:PORT, and the filesystem is chosen with --fs"
        ));
    }
    Ok(format!("https://{host}"))
}

/// `HOST[:PORT]` of a server URL (`[v6]` for an IPv6 address): a host name without blanks or
/// colons, and a port of 1 to 65535 when one is given. Checked here so that a typo is a usage
/// error that names it, not a connection failure.
fn check_host_port(arg: &str, host: &str) -> std::result::Result<(), String> {
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.find(']') {
            Some(i) => (&v6[..i], &v6[i + 1..]),
            None => return Err(format!("the URL '{arg}' has an unclosed '[' in its host")),
        },
        None => match host.find(':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, ""),
        },
    };
    if name.is_empty() {
        return Err(format!("the URL '{arg}' names no host"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(format!("the URL '{arg}' has a blank in its host"));
    }
    if !port.is_empty() {
        let digits = port.strip_prefix(':').unwrap_or(port);
        let ok = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && digits.parse::<u16>().is_ok_and(|p| p > 0);
        if !ok {
            return Err(format!(
                "the URL '{arg}' has no valid port after the host ({port}): a port is 1 to 65535"
            ));
        }
    }
    Ok(())
}

/// `config.toml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// One `[remotes.NAME]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Remote {
    /// `https://host:port`, without a trailing slash.
    pub url: String,
    /// The login name.
    pub user: String,
    /// The private key file (OpenSSH or PKCS#8 PEM). Signed through ssh-agent when
    /// `SSH_AUTH_SOCK` is set and the agent holds it.
    pub key: PathBuf,
    /// The filesystem to log in to (needed when the user has several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
    /// Trust only certificates chaining to this PEM file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (`AB:CD:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The server identity `S` recorded by `remote add`: the client refuses to sign a
    /// challenge that names another server (a relay of another server's login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
}

impl Config {
    /// Reads `config.toml`; a missing file is an empty configuration.
    pub fn load(dirs: &Dirs) -> Result<Config> {
        let path = dirs.config_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    /// Writes `config.toml`: into the file as it is when there is one (what is unchanged
    /// keeps its place and the comments written around it by hand), else a new one.
    pub fn save(&self, dirs: &Dirs) -> Result<()> {
        let path = dirs.config_file();
        let edited = match fs::read_to_string(&path) {
            Ok(old) => match old.parse::<toml_edit::DocumentMut>() {
                Ok(mut doc) => self.edit(&mut doc)?.then(|| doc.to_string()),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let text = match edited {
            Some(text) => text,
            None => {
                let text = toml::to_string_pretty(self).context("serialising the configuration")?;
                let header = "# efs client configuration: `efs remote add|list|remove` edit it.\n\
                              # Tokens are cached apart, in tokens/NAME.json.\n\n";
                format!("{header}{text}")
            }
        };
        write_private(&path, text.as_bytes())
    }

    /// Makes `doc` say what this configuration says, changing only what differs; `false`
    /// when its shape is not the one `save` writes (`remotes` not a table of tables): the
    /// caller then writes a new file.
    fn edit(&self, doc: &mut toml_edit::DocumentMut) -> Result<bool> {
        use toml_edit::{Item, Table, value};
        if !doc.contains_key("remotes") {
            let mut t = Table::new();
            t.set_implicit(true);
            doc.insert("remotes", Item::Table(t));
        }
        let Some(remotes) = doc.get_mut("remotes").and_then(Item::as_table_mut) else {
            return Ok(false);
        };
        if remotes.iter().any(|(_, item)| !item.is_table()) {
            return Ok(false);
        }
        let gone: Vec<String> = remotes
            .iter()
            .map(|(name, _)| name.to_owned())
            .filter(|name| !self.remotes.contains_key(name))
            .collect();
        for name in gone {
            remotes.remove(&name);
        }
        for (name, r) in &self.remotes {
            if !remotes.contains_key(name) {
                remotes.insert(name, Item::Table(Table::new()));
            }
            let Some(t) = remotes.get_mut(name).and_then(Item::as_table_mut) else {
                return Ok(false);
            };
            for (key, v) in r.fields()? {
                match v {
                    Some(v) if t.get(key).and_then(Item::as_str) != Some(v.as_str()) => {
                        t.insert(key, value(v));
                    }
                    Some(_) => {}
                    None => {
                        t.remove(key);
                    }
                }
            }
        }
        Ok(true)
    }
}

impl Remote {
    /// Every field as `config.toml` spells it, `None` for one left out.
    fn fields(&self) -> Result<[(&'static str, Option<String>); 7]> {
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{} is not UTF-8", p.display()))
        };
        Ok([
            ("url", Some(self.url.clone())),
            ("user", Some(self.user.clone())),
            ("key", Some(path(&self.key)?)),
            ("fs", self.fs.clone()),
            ("ca", self.ca.as_deref().map(path).transpose()?),
            ("fingerprint", self.fingerprint.clone()),
            ("server_id", self.server_id.clone()),
        ])
    }
}

/// A cached token, with what it was issued for: a token is reused only for the same URL,
/// user and filesystem choice.
#[derive(Serialize, Deserialize)]
struct CachedToken {
    url: String,
    user: String,
    fs: Option<String>,
    token: TokenInfo,
}

/// Reads the cached token of `name`, if it still fits the remote and has a minute left.
pub(crate) fn load_token(dirs: &Dirs, name: &str, remote: &Remote) -> Option<TokenInfo> {
    let text = fs::read(dirs.token_file(name)).ok()?;
    let cached: CachedToken = serde_json::from_slice(&text).ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let fits = cached.url == remote.url && cached.user == remote.user && cached.fs == remote.fs;
    (fits && cached.token.expires_at_unix > now + 60).then_some(cached.token)
}

pub(crate) fn store_token(
    dirs: &Dirs,
    name: &str,
    remote: &Remote,
    token: &TokenInfo,
) -> Result<()> {
    let cached = CachedToken {
        url: remote.url.clone(),
        user: remote.user.clone(),
        fs: remote.fs.clone(),
        token: token.clone(),
    };
    let json = serde_json::to_vec(&cached).context("serialising the token")?;
    write_private(&dirs.token_file(name), &json)
}

pub(crate) fn remove_token(dirs: &Dirs, name: &str) -> Result<()> {
    let path = dirs.token_file(name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Creates `dir` and its parents with mode 0700 (existing directories are left as they are).
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `data` to `path` atomically with mode 0600: a temporary file in the same
/// directory, fsync, rename over `path`, fsync of the directory. A crash leaves either the
/// old file or the new one, never half of one; the temporary file is removed on failure.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let guard = RemoveOnDrop(Some(tmp.clone()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // An existing temporary file keeps its old mode: set it explicitly.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    std::mem::forget(guard);
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// A remote name: 1 to 64 of `A-Z a-z 0-9 _ -` (no dot, no colon, no slash, so that
/// `NAME:/path` is never ambiguous and `tokens/NAME.json` is a plain file name).
pub(crate) fn valid_remote_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            config: dir.path().join("cfg"),
        };
        assert!(Config::load(&dirs).unwrap().remotes.is_empty());
        let mut c = Config::default();
        c.remotes.insert(
            "drive".into(),
            Remote {
                url: "https://127.0.0.1:8443".into(),
                user: "alice".into(),
                key: "/k".into(),
                fs: Some("drive".into()),
                ca: None,
                fingerprint: Some("AB:CD".into()),
                server_id: Some("efs-0123456789abcdef0123456789abcdef".into()),
            },
        );
        c.save(&dirs).unwrap();
        let back = Config::load(&dirs).unwrap();
        assert_eq!(back.remotes, c.remotes);
        let mode = fs::metadata(dirs.config_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&dirs.config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dirs.config).unwrap().count(), 1);
    }

    /// Regression: every rewrite (`remote add`, `remote remove`, the server identity recorded
    /// at first use) dropped the comments written into config.toml by hand.
    #[test]
    fn a_rewrite_keeps_what_was_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            config: dir.path().to_path_buf(),
        };
        let by_hand = "# my remotes\n\
                       [remotes.drive]\n\
                       # the clinic's server\n\
                       url = \"https://a:1\"  # its port\n\
                       user = \"alice\"\n\
                       key = \"/k\"\n\
                       \n\
                       [remotes.old]\n\
                       url = \"https://b\"\n\
                       user = \"bob\"\n\
                       key = \"/k2\"\n\
                       fs = \"x\"\n";
        fs::write(dirs.config_file(), by_hand).unwrap();
        let mut c = Config::load(&dirs).unwrap();
        let drive = c.remotes.get_mut("drive").unwrap();
        drive.server_id = Some("efs-0123456789abcdef0123456789abcdef".into());
        drive.fs = Some("records".into());
        c.remotes.remove("old");
        let mut new = c.remotes["drive"].clone();
        new.url = "https://c".into();
        new.ca = Some("/ca.pem".into());
        c.remotes.insert("new".into(), new);
        c.save(&dirs).unwrap();
        let text = fs::read_to_string(dirs.config_file()).unwrap();
        for kept in ["# my remotes", "# the clinic's server", "# its port"] {
            assert!(text.contains(kept), "{kept} is gone:\n{text}");
        }
        assert!(!text.contains("[remotes.old]"), "{text}");
        assert_eq!(Config::load(&dirs).unwrap().remotes, c.remotes, "{text}");
        // A field set to nothing goes.
        c.remotes.get_mut("new").unwrap().ca = None;
        c.save(&dirs).unwrap();
        let text = fs::read_to_string(dirs.config_file()).unwrap();
        assert!(!text.contains("ca.pem"), "{text}");
        assert_eq!(Config::load(&dirs).unwrap().remotes, c.remotes, "{text}");
    }

    #[test]
    fn token_cache_checks_remote_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            config: dir.path().to_path_buf(),
        };
        let remote = Remote {
            url: "https://a".into(),
            user: "u".into(),
            key: "/k".into(),
            fs: None,
            ca: None,
            fingerprint: None,
            server_id: None,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let tok = TokenInfo {
            token: "t".into(),
            fs: "f".into(),
            expires_at_unix: now + 3600,
            renewals_left: 24,
        };
        store_token(&dirs, "r", &remote, &tok).unwrap();
        let mode = fs::metadata(dirs.token_file("r"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_token(&dirs, "r", &remote).unwrap().token, "t");
        let other = Remote {
            url: "https://b".into(),
            ..remote.clone()
        };
        assert!(load_token(&dirs, "r", &other).is_none());
        let old = TokenInfo {
            expires_at_unix: now + 30,
            ..tok
        };
        store_token(&dirs, "r", &remote, &old).unwrap();
        assert!(load_token(&dirs, "r", &remote).is_none());
        remove_token(&dirs, "r").unwrap();
        remove_token(&dirs, "r").unwrap();
    }

    #[test]
    fn remote_names() {
        assert!(valid_remote_name("drive"));
        assert!(valid_remote_name("my-drive_2"));
        assert!(!valid_remote_name(""));
        assert!(!valid_remote_name("a.b"));
        assert!(!valid_remote_name("a/b"));
        assert!(!valid_remote_name("a:b"));
        assert!(!valid_remote_name(&"a".repeat(65)));
    }

    /// Regression: a URL with a path was kept, and every login then went to
    /// `/patients/_efs/auth/challenge` and was "refused"; `HTTPS://` was refused.
    #[test]
    fn a_server_url_is_scheme_host_and_port_only() {
        assert_eq!(server_url("https://h:8443").unwrap(), "https://h:8443");
        assert_eq!(server_url("https://h:8443/").unwrap(), "https://h:8443");
        assert_eq!(server_url("HTTPS://h:8443//").unwrap(), "https://h:8443");
        assert_eq!(server_url("Https://[::1]:1").unwrap(), "https://[::1]:1");
        for (bad, why) in [
            ("https://h:8443/patients", "a path (/patients)"),
            ("https://h:8443/patients/", "a path"),
            ("https://h:8443?fs=x", "a query"),
            ("https://h:8443/#top", "a fragment"),
            ("https://alice@h:8443", "--user"),
            ("https://", "no host"),
            ("https://:19471", "no host"),
            ("https://h:19471:", "no valid port"),
            ("https://h:99999", "no valid port"),
            ("https://h:0", "no valid port"),
            ("https://h:", "no valid port"),
            ("https://[::1", "unclosed"),
            ("https://[::1]x", "no valid port"),
            ("http://h:8443", "must start with https://"),
            ("h:8443", "must start with https://"),
        ] {
            let e = server_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

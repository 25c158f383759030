//! Who a container's process is: a user and group given by id or by name
//! (the image's `USER`, or a security context's), resolved against the
//! image's `/etc/passwd` and `/etc/group` as containerd resolves them, and
//! the groups that make up its supplementary list.
//!
//! The module owns the parsing (the files are untrusted: a line that does
//! not parse is skipped, never an error) and the rules:
//! - a user name must be in passwd; a numeric uid need not be, and then
//!   its primary group is 0;
//! - a group (after `:`) replaces the user's primary group; a group name
//!   must be in the group file;
//! - the supplementary groups are those of the group file that list the
//!   user's name as a member, then the ones the caller adds.
//!
//! It reads no files itself: callers hand it the bytes (see
//! `stratum_image::merged`).

use super::error::{Result, RuntimeError};

/// A passwd line's fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// A group line's fields that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The image's user database (either file may be missing: empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    passwd: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, without repeats.
    pub additional_gids: Vec<u32>,
}

/// A user as asked for: by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(u32),
    Name(String),
}

impl UserRef {
    /// A number is an id, anything else a name.
    pub fn parse(text: &str) -> UserRef {
        match text.parse::<u32>() {
            Ok(id) => UserRef::Id(id),
            Err(_) => UserRef::Name(text.to_string()),
        }
    }
}

impl UserDb {
    /// Parses the two files' contents.
    pub fn parse(passwd: &[u8], group: &[u8]) -> UserDb {
        UserDb {
            passwd: lines(passwd).filter_map(passwd_entry).collect(),
            groups: lines(group).filter_map(group_entry).collect(),
        }
    }

    /// Resolves `user` and an optional `group` (the image's `USER` is
    /// `user[:group]`), adding `extra_gids` to the supplementary groups.
    pub fn resolve(
        &self,
        user: &UserRef,
        group: Option<&UserRef>,
        extra_gids: &[u32],
    ) -> Result<Identity> {
        let (uid, mut gid, name) = match user {
            UserRef::Id(uid) => match self.passwd.iter().find(|e| e.uid == *uid) {
                Some(entry) => (*uid, entry.gid, Some(entry.name.as_str())),
                None => (*uid, 0, None),
            },
            // Every image's root, with or without a passwd file.
            UserRef::Name(name)
                if name == "root" && !self.passwd.iter().any(|e| e.name == *name) =>
            {
                (0, 0, None)
            }
            UserRef::Name(name) => {
                let entry = self
                    .passwd
                    .iter()
                    .find(|e| e.name == *name)
                    .ok_or_else(|| {
                        RuntimeError::invalid(
                            "user",
                            name.as_str(),
                            "not in the image's /etc/passwd",
                        )
                    })?;
                (entry.uid, entry.gid, Some(entry.name.as_str()))
            }
        };
        match group {
            None => {}
            Some(UserRef::Id(id)) => gid = *id,
            Some(UserRef::Name(name)) => {
                gid = self
                    .groups
                    .iter()
                    .find(|g| g.name == *name)
                    .map(|g| g.gid)
                    .ok_or_else(|| {
                        RuntimeError::invalid(
                            "group",
                            name.as_str(),
                            "not in the image's /etc/group",
                        )
                    })?
            }
        }
        let mut additional_gids: Vec<u32> = Vec::new();
        let member_of = self
            .groups
            .iter()
            .filter(|g| name.is_some_and(|n| g.members.iter().any(|m| m == n)))
            .map(|g| g.gid);
        for id in member_of.chain(extra_gids.iter().copied()) {
            if !additional_gids.contains(&id) {
                additional_gids.push(id);
            }
        }
        Ok(Identity {
            uid,
            gid,
            additional_gids,
        })
    }
}

/// Splits an image `USER` (`user`, `user:group`, ids or names).
pub fn parse_user_spec(text: &str) -> (UserRef, Option<UserRef>) {
    match text.split_once(':') {
        Some((user, group)) if !group.is_empty() => {
            (UserRef::parse(user), Some(UserRef::parse(group)))
        }
        Some((user, _)) => (UserRef::parse(user), None),
        None => (UserRef::parse(text), None),
    }
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &str> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// `name:password:uid:gid:gecos:home:shell`.
fn passwd_entry(line: &str) -> Option<PasswdEntry> {
    let mut fields = line.split(':');
    let name = fields.next()?.to_string();
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    (!name.is_empty()).then_some(PasswdEntry { name, uid, gid })
}

/// `name:password:gid:member,member`.
fn group_entry(line: &str) -> Option<GroupEntry> {
    let mut fields = line.split(':');
    let name = fields.next()?.to_string();
    let _password = fields.next()?;
    let gid = fields.next()?.parse().ok()?;
    let members = fields
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect();
    (!name.is_empty()).then_some(GroupEntry { name, gid, members })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        default-user:x:1000:1000::/home/default-user:/bin/sh\n\
        broken line\n\
        bad:x:notanumber:1::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        default-user:x:1000:\n\
        group-defined-in-image:x:50000:default-user\n\
        staff:x:50:www-data, default-user\n";

    fn db() -> UserDb {
        UserDb::parse(PASSWD.as_bytes(), GROUP.as_bytes())
    }

    #[test]
    fn names_and_ids_resolve_as_containerd_resolves_them() {
        let db = db();
        let www = db.resolve(&UserRef::parse("www-data"), None, &[]).unwrap();
        assert_eq!((www.uid, www.gid), (33, 33));
        assert_eq!(www.additional_gids, vec![50]);
        let user = db.resolve(&UserRef::Id(1000), None, &[1234]).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.additional_gids, vec![50000, 50, 1234]);
        // An id the image does not know runs with group 0 and no groups.
        let stranger = db.resolve(&UserRef::Id(4242), None, &[]).unwrap();
        assert_eq!((stranger.uid, stranger.gid), (4242, 0));
        assert!(stranger.additional_gids.is_empty());
        assert!(db
            .resolve(&UserRef::parse("nobody-here"), None, &[])
            .is_err());
    }

    #[test]
    fn a_group_replaces_the_primary_one() {
        let db = db();
        let (user, group) = parse_user_spec("www-data:staff");
        let id = db.resolve(&user, group.as_ref(), &[]).unwrap();
        assert_eq!((id.uid, id.gid), (33, 50));
        let (user, group) = parse_user_spec("1000:4321");
        let id = db.resolve(&user, group.as_ref(), &[]).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 4321));
        let (user, group) = parse_user_spec("1000:nosuchgroup");
        assert!(db.resolve(&user, group.as_ref(), &[]).is_err());
        assert_eq!(parse_user_spec("7:"), (UserRef::Id(7), None));
    }

    #[test]
    fn garbage_files_parse_to_nothing() {
        let db = UserDb::parse(b"\xff\xfe:::\n::::\n", b"\0\0\0");
        assert_eq!(db, UserDb::default());
        let root = db.resolve(&UserRef::Id(0), None, &[]).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let root = db.resolve(&UserRef::parse("root"), None, &[]).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
    }
}

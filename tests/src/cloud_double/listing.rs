//! The two listings of Supabase Storage, over the double's objects, in the
//! order and with the names its SQL functions give (supabase/storage
//! `migrations/tenant/0063-fix-search-name-relative-to-prefix.sql` for
//! `storage.search`, `0050-search-v2-optimised.sql` for
//! `storage.list_objects_with_delimiter`, `src/storage/database/pg.ts` for
//! the flat `listObjectsV2`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::Entry;

/// One bucket's objects, by name (bytewise, as `COLLATE "C"`) and by
/// lower-cased name (what `storage.search` walks).
#[derive(Default)]
pub(crate) struct BucketObjects {
    pub by_name: BTreeMap<String, Arc<Entry>>,
    by_folded: BTreeMap<(String, String), Arc<Entry>>,
}

impl BucketObjects {
    pub fn insert(&mut self, entry: Arc<Entry>) {
        let name = entry.object.key.clone();
        if let Some(old) = self.by_name.insert(name.clone(), entry.clone()) {
            self.by_folded
                .remove(&(old.object.key.to_lowercase(), old.object.key.clone()));
        }
        self.by_folded.insert((name.to_lowercase(), name), entry);
    }

    pub fn remove(&mut self, key: &str) -> Option<Arc<Entry>> {
        let old = self.by_name.remove(key)?;
        self.by_folded
            .remove(&(key.to_lowercase(), key.to_string()));
        Some(old)
    }
}

/// The column `list` sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortColumn {
    Name,
    UpdatedAt,
    CreatedAt,
    LastAccessedAt,
}

/// A row of `list`: a folder (name only) or a file.
pub(crate) enum V1Row {
    Folder(String),
    File(String, Arc<Entry>),
}

/// `name` without its first `chars` characters (SQL `substring(name from
/// chars + 1)`).
fn skip_chars(name: &str, chars: usize) -> &str {
    match name.char_indices().nth(chars) {
        Some((i, _)) => &name[i..],
        None => "",
    }
}

/// `storage.get_common_prefix(key, prefix, '/')`: the key up to the first
/// `/` after the prefix, slash included; `None` for a leaf.
fn common_prefix<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix_chars = prefix.chars().count();
    let rest = skip_chars(key, prefix_chars);
    let slash = rest.find('/')?;
    Some(&key[..key.len() - rest.len() + slash + 1])
}

/// `POST /object/list/<bucket>`: one level under `prefix` (made a folder:
/// a `/` is added when missing), case-insensitive, folders and files
/// interleaved in name order, `offset` rows skipped, at most `limit`.
pub(crate) fn list_v1(
    objects: &BucketObjects,
    prefix: &str,
    search: &str,
    limit: usize,
    offset: usize,
    column: SortColumn,
    desc: bool,
) -> Vec<V1Row> {
    let mut prefix = prefix.to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let limit = limit.min(1500);
    let full = format!("{prefix}{search}");
    let full_lower = full.to_lowercase();
    let prefix_chars = prefix.chars().count();
    let matching: Vec<&Arc<Entry>> = objects
        .by_folded
        .range((
            Bound::Included((full_lower.clone(), String::new())),
            Bound::Unbounded,
        ))
        .take_while(|((lower, _), _)| lower.starts_with(&full_lower))
        .map(|(_, e)| e)
        .collect();
    if column != SortColumn::Name {
        return list_v1_by_time(&matching, &prefix, &full, limit, offset, column, desc);
    }
    let mut rows = Vec::new();
    let mut skipped = 0;
    let mut last_folder: Option<String> = None;
    let iter: Box<dyn Iterator<Item = &&Arc<Entry>>> = if desc {
        Box::new(matching.iter().rev())
    } else {
        Box::new(matching.iter())
    };
    for entry in iter {
        if rows.len() >= limit {
            break;
        }
        let name = &entry.object.key;
        match common_prefix(name, &full) {
            Some(folder) => {
                let folded = folder.to_lowercase();
                if last_folder.as_deref() == Some(folded.as_str()) {
                    continue;
                }
                last_folder = Some(folded);
                if skipped < offset {
                    skipped += 1;
                    continue;
                }
                let trimmed = folder.trim_end_matches('/');
                rows.push(V1Row::Folder(skip_chars(trimmed, prefix_chars).to_string()));
            }
            None => {
                if skipped < offset {
                    skipped += 1;
                    continue;
                }
                rows.push(V1Row::File(
                    skip_chars(name, prefix_chars).to_string(),
                    (*entry).clone(),
                ));
            }
        }
    }
    rows
}

/// `storage.search` sorted by a timestamp: the folders first (by name),
/// then the files of the level by the column.
fn list_v1_by_time(
    matching: &[&Arc<Entry>],
    prefix: &str,
    full: &str,
    limit: usize,
    offset: usize,
    column: SortColumn,
    desc: bool,
) -> Vec<V1Row> {
    let tokens = |s: &str| -> usize {
        if s.is_empty() {
            1
        } else {
            s.split('/').count()
        }
    };
    let start = tokens(prefix);
    let levels = tokens(full);
    let mut folders: Vec<String> = Vec::new();
    let mut files: Vec<(String, &Arc<Entry>)> = Vec::new();
    for entry in matching {
        let parts: Vec<&str> = entry.object.key.split('/').collect();
        let name = parts[(start - 1).min(parts.len())..levels.min(parts.len())].join("/");
        if parts.len() > levels {
            folders.push(name);
        } else if parts.len() == levels {
            files.push((name, entry));
        }
    }
    folders.sort();
    folders.dedup();
    if desc {
        folders.reverse();
    }
    let at = |e: &Entry| match column {
        SortColumn::UpdatedAt => e.object.updated_at,
        SortColumn::CreatedAt => e.object.created_at,
        _ => e.object.last_accessed_at,
    };
    files.sort_by(|a, b| at(a.1).cmp(&at(b.1)).then_with(|| a.0.cmp(&b.0)));
    if desc {
        files.reverse();
    }
    folders
        .into_iter()
        .map(V1Row::Folder)
        .chain(
            files
                .into_iter()
                .map(|(name, e)| V1Row::File(name, e.clone())),
        )
        .skip(offset)
        .take(limit)
        .collect()
}

/// A row of `list-v2`: a folder's name without its trailing slash, or a file.
pub(crate) struct V2Row {
    pub name: String,
    pub entry: Option<Arc<Entry>>,
}

/// `list-v2` without a delimiter: every object under `prefix` (a plain
/// string prefix, case-sensitive), after the cursor's name, by name.
pub(crate) fn list_v2_flat(
    objects: &BucketObjects,
    prefix: &str,
    after: Option<&str>,
    desc: bool,
    max: usize,
) -> Vec<V2Row> {
    let in_prefix = objects
        .by_name
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(|(name, _)| name.starts_with(prefix));
    let row = |(name, e): (&String, &Arc<Entry>)| V2Row {
        name: name.clone(),
        entry: Some(e.clone()),
    };
    if desc {
        let all: Vec<_> = in_prefix.collect();
        all.into_iter()
            .rev()
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() < a))
            .take(max)
            .map(row)
            .collect()
    } else {
        in_prefix
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .take(max)
            .map(row)
            .collect()
    }
}

/// `storage.list_objects_with_delimiter(bucket, prefix, '/', max, start)`:
/// the folders (collapsed) and files right under `prefix`, by name.
pub(crate) fn list_v2_delimited(
    objects: &BucketObjects,
    prefix: &str,
    start: Option<&str>,
    desc: bool,
    max: usize,
) -> Vec<V2Row> {
    let map = &objects.by_name;
    let in_prefix = |name: &str| name.starts_with(prefix);
    let is_folder = |start: &str| {
        let dir = format!("{start}/");
        map.range::<str, _>((Bound::Included(dir.as_str()), Bound::Unbounded))
            .next()
            .is_some_and(|(n, _)| n.starts_with(&dir))
    };
    let mut rows = Vec::new();
    if !desc {
        // Names >= seek.
        let mut seek = match start {
            None | Some("") => prefix.to_string(),
            Some(s) if is_folder(s) => format!("{s}0"),
            Some(s) => format!("{s}/"),
        };
        while rows.len() < max {
            let Some((name, entry)) = map
                .range::<str, _>((Bound::Included(seek.as_str()), Bound::Unbounded))
                .next()
            else {
                break;
            };
            if !in_prefix(name) {
                break;
            }
            match common_prefix(name, prefix) {
                Some(folder) => {
                    rows.push(V2Row {
                        name: folder.trim_end_matches('/').to_string(),
                        entry: None,
                    });
                    // '0' follows '/': past everything in the folder.
                    seek = format!("{}0", &folder[..folder.len() - 1]);
                }
                None => {
                    rows.push(V2Row {
                        name: name.clone(),
                        entry: Some(entry.clone()),
                    });
                    seek = format!("{name}\0");
                }
            }
        }
    } else {
        // Names < seek.
        let mut seek = match start {
            None | Some("") => {
                let Some((last, _)) = map
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|(n, _)| in_prefix(n))
                    .last()
                else {
                    return rows;
                };
                format!("{last}/")
            }
            Some(s) if is_folder(s) => format!("{s}/"),
            Some(s) => s.to_string(),
        };
        while rows.len() < max {
            let Some((name, entry)) = map
                .range::<str, _>((Bound::Unbounded, Bound::Excluded(seek.as_str())))
                .next_back()
            else {
                break;
            };
            if !in_prefix(name) {
                break;
            }
            match common_prefix(name, prefix) {
                Some(folder) => {
                    rows.push(V2Row {
                        name: folder.trim_end_matches('/').to_string(),
                        entry: None,
                    });
                    seek = folder.to_string();
                }
                None => {
                    rows.push(V2Row {
                        name: name.clone(),
                        entry: Some(entry.clone()),
                    });
                    seek = name.clone();
                }
            }
        }
    }
    rows
}

/// `list-v2`'s continuation token (supabase/storage `src/storage/object.ts`
/// `encodeContinuationToken`): `l:<last name>`, `o:<order>`, `c:<column>`
/// lines, base64.
pub(crate) fn encode_cursor(last: &str, order: Option<&str>, column: Option<&str>) -> String {
    use base64::Engine as _;
    let mut text = format!("l:{last}\n");
    if let Some(o) = order {
        text.push_str(&format!("o:{o}\n"));
    }
    if let Some(c) = column {
        text.push_str(&format!("c:{c}\n"));
    }
    text.pop();
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A decoded token: (start after, order, column); `None` when Storage
/// answers `Invalid Parameter continuation token`.
pub(crate) struct Cursor {
    pub start_after: String,
    pub order: String,
    pub column: Option<String>,
}

pub(crate) fn decode_cursor(token: &str) -> Option<Cursor> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(token.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut cursor = Cursor {
        start_after: String::new(),
        order: "asc".into(),
        column: None,
    };
    for part in text.split('\n') {
        let mut chars = part.chars();
        let key = chars.next()?;
        if key.is_whitespace() || chars.next() != Some(':') {
            return None;
        }
        let value = &part[key.len_utf8() + 1..];
        match key {
            'l' => cursor.start_after = value.to_string(),
            'o' => cursor.order = value.to_string(),
            'c' => cursor.column = Some(value.to_string()),
            'a' => {}
            _ => return None,
        }
    }
    Some(cursor)
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, Object};
    use super::*;

    fn bucket(keys: &[&str]) -> BucketObjects {
        let mut b = BucketObjects::default();
        for (i, k) in keys.iter().enumerate() {
            let at = super::super::epoch() + chrono::Duration::seconds(100 - i as i64);
            b.insert(Arc::new(Entry::new(0, Object::new("b", k, 1).at(at))));
        }
        b
    }

    fn v1(rows: Vec<V1Row>) -> Vec<String> {
        rows.into_iter()
            .map(|r| match r {
                V1Row::Folder(n) => format!("{n}/"),
                V1Row::File(n, _) => n,
            })
            .collect()
    }

    fn v2(rows: Vec<V2Row>) -> Vec<String> {
        rows.into_iter()
            .map(|r| match r.entry {
                None => format!("{}/", r.name),
                Some(_) => r.name,
            })
            .collect()
    }

    const KEYS: [&str; 7] = ["a/1", "a/2", "B/x/y", "b.txt", "c", "Ä/1", "a-z"];

    #[test]
    fn list_v1_search_case_and_time_order() {
        let b = bucket(&KEYS);
        let all = v1(list_v1(&b, "", "", 100, 0, SortColumn::Name, false));
        // Lower-cased bytes: '-' and '.' sort before '/'.
        assert_eq!(all, ["a-z", "a/", "b.txt", "B/", "c", "Ä/"]);
        // `search` filters by name start, case-insensitively, under the prefix.
        let found = v1(list_v1(&b, "", "b", 100, 0, SortColumn::Name, false));
        assert_eq!(found, ["b.txt", "B/"]);
        let inside = v1(list_v1(&b, "B", "", 100, 0, SortColumn::Name, false));
        assert_eq!(inside, ["x/"]);
        // By time: folders first (by name), then the level's files.
        let by_time = v1(list_v1(&b, "", "", 100, 0, SortColumn::CreatedAt, false));
        assert_eq!(by_time, ["B/", "a/", "Ä/", "a-z", "c", "b.txt"]);
        let page = v1(list_v1(&b, "", "", 2, 3, SortColumn::CreatedAt, true));
        assert_eq!(page, ["b.txt", "c"]);
    }

    #[test]
    fn list_v2_both_directions() {
        let b = bucket(&KEYS);
        let asc = v2(list_v2_delimited(&b, "", None, false, 100));
        assert_eq!(asc, ["B/", "a-z", "a/", "b.txt", "c", "Ä/"]);
        let desc = v2(list_v2_delimited(&b, "", None, true, 100));
        assert_eq!(desc, ["Ä/", "c", "b.txt", "a/", "a-z", "B/"]);
        // After a folder, after a file.
        let after = v2(list_v2_delimited(&b, "", Some("a"), false, 2));
        assert_eq!(after, ["b.txt", "c"]);
        let before = v2(list_v2_delimited(&b, "", Some("b.txt"), true, 100));
        assert_eq!(before, ["a/", "a-z", "B/"]);
        let flat = v2(list_v2_flat(&b, "a", Some("a-z"), false, 100));
        assert_eq!(flat, ["a/1", "a/2"]);
        let flat_desc = v2(list_v2_flat(&b, "", Some("b.txt"), true, 2));
        assert_eq!(flat_desc, ["a/2", "a/1"]);
    }

    #[test]
    fn cursors_round_trip() {
        let token = encode_cursor("a/é b", Some("asc"), None);
        let c = decode_cursor(&token).unwrap();
        assert_eq!((c.start_after.as_str(), c.order.as_str()), ("a/é b", "asc"));
        assert!(decode_cursor("!!!").is_none());
        assert!(decode_cursor(&encode_cursor_text("x:1")).is_none());
    }

    fn encode_cursor_text(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    }
}

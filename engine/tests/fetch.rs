//! `pipeline fetch` on local archives (CI has no internet): the checksum gate, unpacking into
//! the folder the recipes read, refusing archives that would write outside it, and leaving
//! nothing behind on failure. Archives and their MD5s come from
//! tests/fixtures/fetch/make_fixtures.py (Python's tarfile, gzip and hashlib).
use engine::fetch::{fetch, md5_of, FetchError, Fetched};
use stages::data::catalogue::{find, CatalogueEntry, Origin, Unpack};
use stages::data::{DatasetSpec, Split};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fetch").join(name)
}

fn expected_md5(name: &str) -> &'static str {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap();
    Box::leak(json[name].as_str().unwrap().to_string().into_boxed_str())
}

/// The real cifar10 entry, but with the fixture archive's checksum.
fn tiny_cifar10(md5: &'static str) -> CatalogueEntry {
    let real = *find("cifar10").unwrap();
    let Origin::Download { url, bytes, .. } = real.origin else { panic!("cifar10 is a download") };
    CatalogueEntry { origin: Origin::Download { url, md5, bytes, unpack: Unpack::TarGz }, ..real }
}

/// Everything under `dir` except the staging folder.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".fetch")
        .collect();
    names.sort();
    names
}

#[test]
fn md5_matches_pythons_hashlib() {
    assert_eq!(md5_of(&fixture("tiny-cifar10.tar.gz")).unwrap(), expected_md5("tiny-cifar10.tar.gz"));
    assert_eq!(md5_of(&fixture("evil.tar.gz")).unwrap(), expected_md5("evil.tar.gz"));
}

#[test]
fn a_verified_archive_unpacks_where_the_recipes_read_and_loads() {
    let data = tempfile::tempdir().unwrap();
    let entry = tiny_cifar10(expected_md5("tiny-cifar10.tar.gz"));
    let archive = fixture("tiny-cifar10.tar.gz");
    let result = fetch(&entry, data.path(), Some(&archive), true).unwrap();
    let folder = data.path().join("cifar-10-batches-bin");
    assert_eq!(result, Fetched::Installed(folder.clone()));
    assert!(archive.is_file(), "the user's archive is left alone");
    // The loader reads what was unpacked: labels 3 and 7, pixels i mod 256.
    let spec = DatasetSpec::from_json(serde_json::json!({"format": "cifar10-bin", "root": folder})).unwrap();
    let set = spec.load(Split::Test).unwrap();
    assert_eq!(set.labels, vec![3, 7]);
    assert_eq!((set.image(1)[1] * 255.0).round(), 1.0);
    // A second fetch finds the folder and touches nothing.
    assert_eq!(fetch(&entry, data.path(), Some(&archive), true).unwrap(), Fetched::AlreadyPresent(folder));
}

/// An existing empty folder is filled, not taken for the data set (issue 12).
#[test]
fn an_empty_folder_in_place_is_filled() {
    let data = tempfile::tempdir().unwrap();
    let folder = data.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).unwrap();
    let entry = tiny_cifar10(expected_md5("tiny-cifar10.tar.gz"));
    let result = fetch(&entry, data.path(), Some(&fixture("tiny-cifar10.tar.gz")), true).unwrap();
    assert_eq!(result, Fetched::Installed(folder.clone()));
    assert!(std::fs::read_dir(&folder).unwrap().count() > 0);
}

#[test]
fn a_checksum_mismatch_names_both_digests_and_unpacks_nothing() {
    let data = tempfile::tempdir().unwrap();
    let entry = tiny_cifar10("c32a1d4ab5d03f1284b67883e8d87530");
    let error = fetch(&entry, data.path(), Some(&fixture("tiny-cifar10.tar.gz")), true).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, FetchError::Checksum { .. }), "{text}");
    assert!(
        text.contains("c32a1d4ab5d03f1284b67883e8d87530")
            && text.contains(expected_md5("tiny-cifar10.tar.gz")),
        "{text}"
    );
    assert!(text.contains("tiny-cifar10.tar.gz"), "{text}");
    assert!(listing(data.path()).is_empty(), "{:?}", listing(data.path()));
}

#[test]
fn an_archive_escaping_its_folder_is_refused_and_leaves_nothing() {
    let data = tempfile::tempdir().unwrap();
    let entry = tiny_cifar10(expected_md5("evil.tar.gz"));
    let error = fetch(&entry, data.path(), Some(&fixture("evil.tar.gz")), true).unwrap_err();
    assert!(matches!(error, FetchError::UnsafeEntry { .. }), "{error}");
    assert!(error.to_string().contains("../escape.txt"), "{error}");
    assert!(listing(data.path()).is_empty(), "{:?}", listing(data.path()));
    assert!(
        !data.path().join("escape.txt").exists()
            && !data.path().parent().unwrap().join("escape.txt").exists()
    );
    let staged: Vec<_> = std::fs::read_dir(data.path().join(".fetch")).unwrap().collect();
    assert!(staged.is_empty(), "the staging folder is removed");
}

#[test]
fn sets_without_a_published_archive_say_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let error = fetch(find("lsun").unwrap(), data.path(), None, true).unwrap_err();
    assert!(error.to_string().contains("DATA/LSUN"), "{error}");
}

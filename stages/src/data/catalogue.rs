//! Where the public datasets of the recipes come from: the archive to download, its published
//! MD5 checksum, and the folder it yields under the data directory (`${PIPELINE_DATA:-data}` in
//! the recipes). Sets without a stable published archive and checksum (the OOD papers' LSUN,
//! iSUN, Places365, iNaturalist and TinyImageNet subsets) say how to get them by hand.
use std::path::Path;

/// How a downloaded file becomes the folder the recipes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// A gzip-compressed tar archive whose top-level folder is the entry's `folder`.
    TarGz,
    /// A single file placed as `folder/<file name>`.
    Plain,
}

/// Where an entry's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Download {
        url: &'static str,
        /// The MD5 the publisher (or torchvision, for SVHN and DTD) gives for the file.
        md5: &'static str,
        /// The file's size in bytes, for progress.
        bytes: u64,
        unpack: Unpack,
    },
    /// No archive with a published checksum: what to do instead.
    Manual(&'static str),
}

/// One dataset `pipeline fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// The folder under the data directory that recipes point at (or its parent for DTD,
    /// whose recipes read `dtd/images`).
    pub folder: &'static str,
    pub origin: Origin,
}

impl CatalogueEntry {
    /// The file name of the download (the last part of its URL).
    pub fn file_name(&self) -> Option<&'static str> {
        match self.origin {
            Origin::Download { url, .. } => url.rsplit('/').next(),
            Origin::Manual(_) => None,
        }
    }
}

const ENTRIES: &[CatalogueEntry] = &[
    CatalogueEntry {
        name: "cifar10",
        description: "CIFAR-10, binary version (50,000 training and 10,000 test images)",
        folder: "cifar-10-batches-bin",
        origin: Origin::Download {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
            bytes: 170_052_171,
            unpack: Unpack::TarGz,
        },
    },
    CatalogueEntry {
        name: "cifar100",
        description: "CIFAR-100, binary version",
        folder: "cifar-100-binary",
        origin: Origin::Download {
            url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
            bytes: 168_513_733,
            unpack: Unpack::TarGz,
        },
    },
    CatalogueEntry {
        name: "svhn",
        description: "SVHN test set (test_32x32.mat, 26,032 digits)",
        folder: "svhn",
        origin: Origin::Download {
            url: "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            md5: "eb5a983be6a315427106f1b164d9cef3",
            bytes: 64_275_384,
            unpack: Unpack::Plain,
        },
    },
    CatalogueEntry {
        name: "textures",
        description: "Describable Textures Dataset r1.0.1 (5,640 images; recipes read dtd/images)",
        folder: "dtd",
        origin: Origin::Download {
            url: "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
            md5: "fff73e5086ae6bdbea199a49dfb8a4c1",
            bytes: 625_239_812,
            unpack: Unpack::TarGz,
        },
    },
    CatalogueEntry {
        name: "places365",
        description: "Places365 OOD subset",
        folder: "places365",
        origin: Origin::Manual(
            "the OOD papers use a 10,000-image subset of Places365 with no published checksum: \
             put its images (any folder depth, JPEG or PNG) under DATA/places365",
        ),
    },
    CatalogueEntry {
        name: "lsun",
        description: "LSUN (crop) OOD set from ODIN",
        folder: "LSUN",
        origin: Origin::Manual(
            "download LSUN.tar.gz from the ODIN repository (github.com/facebookresearch/odin) and \
             unpack it so that the images are under DATA/LSUN",
        ),
    },
    CatalogueEntry {
        name: "isun",
        description: "iSUN OOD set from ODIN",
        folder: "SUN",
        origin: Origin::Manual(
            "download iSUN.tar.gz from the ODIN repository (github.com/facebookresearch/odin) and \
             put its images under DATA/SUN",
        ),
    },
    CatalogueEntry {
        name: "inaturalist",
        description: "iNaturalist OOD subset (MOS)",
        folder: "iNaturalist",
        origin: Origin::Manual(
            "the 10,000-image iNaturalist subset of MOS (github.com/deeplearning-wisc/large_scale_ood) \
             has no published checksum: put its images under DATA/iNaturalist",
        ),
    },
    CatalogueEntry {
        name: "tinyimagenet",
        description: "TinyImageNet (crop) OOD set from ODIN",
        folder: "TinyImageNet",
        origin: Origin::Manual(
            "download Imagenet.tar.gz from the ODIN repository (github.com/facebookresearch/odin) and \
             put its images under DATA/TinyImageNet",
        ),
    },
];

/// Every dataset `pipeline fetch` knows.
pub fn catalogue() -> &'static [CatalogueEntry] {
    ENTRIES
}

/// The entry called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static CatalogueEntry> {
    ENTRIES.iter().find(|e| e.name.eq_ignore_ascii_case(name))
}

/// The catalogue entry a recipe's folder `root` is (or is inside of), by its folder name.
pub fn for_folder(root: &Path) -> Option<&'static CatalogueEntry> {
    root.ancestors().filter_map(|p| p.file_name()).find_map(|f| ENTRIES.iter().find(|e| f == e.folder))
}

/// How to get the data set `name` of the catalogue into `root` (the folder a recipe reads):
/// the `pipeline fetch` command, with `--to` when `root` is not where fetch puts it by default,
/// or for sets without an archive what to do by hand.
pub fn how_to_get(name: &str, root: &Path) -> String {
    let Some(entry) = find(name) else { return String::new() };
    // `fetch` unpacks into DATA/<folder>; DTD's recipes read DATA/dtd/images.
    let folder = root.ancestors().find(|p| p.file_name().is_some_and(|f| f == entry.folder)).unwrap_or(root);
    let parent = folder.parent().filter(|p| !p.as_os_str().is_empty());
    match entry.origin {
        Origin::Download { .. } => match parent {
            Some(parent) => format!("get it with `pipeline fetch {} --to {}`", entry.name, parent.display()),
            None => format!("get it with `pipeline fetch {}`", entry.name),
        },
        Origin::Manual(how) => how.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_to_get_names_the_fetch_command_and_folder() {
        let root = Path::new("/data/cifar-10-batches-bin");
        assert_eq!(how_to_get("cifar10", root), "get it with `pipeline fetch cifar10 --to /data`");
        let dtd = Path::new("/d/dtd/images");
        assert_eq!(how_to_get("textures", dtd), "get it with `pipeline fetch textures --to /d`");
        assert!(how_to_get("places365", Path::new("/d/places365")).contains("DATA/places365"));
        assert_eq!(how_to_get("imagenet", root), "");
        assert_eq!(for_folder(dtd).map(|e| e.name), Some("textures"));
        assert!(for_folder(Path::new("/d/other")).is_none());
    }

    #[test]
    fn every_download_has_an_md5_and_a_file_name() {
        for entry in catalogue() {
            if let Origin::Download { md5, .. } = entry.origin {
                assert_eq!(md5.len(), 32, "{}", entry.name);
                assert!(md5.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
                assert!(entry.file_name().is_some_and(|f| f.contains('.')));
            }
        }
        assert_eq!(find("CIFAR10").map(|e| e.folder), Some("cifar-10-batches-bin"));
        assert!(find("imagenet").is_none());
    }
}

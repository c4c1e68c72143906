//! The dataset loaders against files written in the exact formats by
//! tests/fixtures/data/make_fixtures.py (numpy, scipy.io.savemat, Pillow); expected.json holds the
//! labels and pixel checks computed there.
use stages::data::{DatasetSpec, Split};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn spec(json: serde_json::Value) -> DatasetSpec {
    let mut spec = DatasetSpec::from_json(json).unwrap();
    spec.resolve_paths(&fixtures());
    assert!(spec.check().is_empty());
    spec
}

fn labels(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Compares images (pixels in [0, 1], (C, H, W)) with the fixture's byte checks.
fn assert_pixels(set: &stages::data::ImageSet, checks: &serde_json::Value) {
    let checks = checks.as_array().unwrap();
    assert_eq!(set.len(), checks.len());
    for (i, check) in checks.iter().enumerate() {
        let image = set.image(i);
        let byte = |c: usize, y: usize, x: usize| (image[c * 1024 + y * 32 + x] * 255.0).round() as u64;
        let sum: f64 = image.iter().map(|&p| (p * 255.0).round() as f64).sum();
        assert_eq!(sum as u64, check["byte_sum"].as_u64().unwrap(), "image {i}: byte sum");
        assert_eq!(byte(0, 0, 0), check["c0_y0_x0"].as_u64().unwrap(), "image {i}");
        assert_eq!(byte(1, 5, 7), check["c1_y5_x7"].as_u64().unwrap(), "image {i}");
        assert_eq!(byte(2, 31, 30), check["c2_y31_x30"].as_u64().unwrap(), "image {i}");
    }
}

#[test]
fn cifar10_binary_batches() {
    let e = &expected()["cifar10"];
    let spec = spec(serde_json::json!({"format": "cifar10-bin", "root": "cifar-10-batches-bin"}));
    let train = spec.load(Split::Train).unwrap();
    assert_eq!((train.shape, train.num_classes), ([3, 32, 32], 10));
    assert_eq!(train.labels, labels(&e["train_labels"]));
    assert_pixels(&train, &e["train_checks"]);
    let test = spec.load(Split::Test).unwrap();
    assert_eq!(test.labels, labels(&e["test_labels"]));
    assert_pixels(&test, &e["test_checks"]);
    assert_eq!(spec.files().unwrap().len(), 6);
    // A class subset is relabelled in the order given.
    let wanted = labels(&e["test_labels"])[0];
    let subset = DatasetSpec::from_json(serde_json::json!({
        "format": "cifar10-bin", "root": fixtures().join("cifar-10-batches-bin"), "classes": [wanted]
    }))
    .unwrap();
    let set = subset.load(Split::Test).unwrap();
    assert!(set.labels.iter().all(|&l| l == 0) && set.num_classes == 1);
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    for (labels_kind, total) in [("fine", 100), ("coarse", 20)] {
        let spec = spec(
            serde_json::json!({"format": "cifar100-bin", "root": "cifar-100-binary", "labels": labels_kind}),
        );
        for split in ["train", "test"] {
            let e = &expected()[format!("cifar100_{split}")];
            let set = spec.load(if split == "train" { Split::Train } else { Split::Test }).unwrap();
            assert_eq!(set.num_classes, total);
            assert_eq!(set.labels, labels(&e[labels_kind]));
            assert_pixels(&set, &e["checks"]);
        }
    }
}

#[test]
fn svhn_mat_files_compressed_and_plain() {
    let spec = spec(serde_json::json!({"format": "svhn-mat", "root": "svhn"}));
    for (split, key) in [(Split::Test, "svhn_test"), (Split::Train, "svhn_train")] {
        let e = &expected()[key];
        let set = spec.load(split).unwrap();
        assert_eq!(set.labels, labels(&e["labels"]), "{key}: label 10 means the digit 0");
        assert_pixels(&set, &e["checks"]);
    }
}

#[test]
fn image_folders_are_decoded_to_rgb_and_resized() {
    let spec = spec(serde_json::json!({"format": "image-folder", "root": "images"}));
    let set = spec.load(Split::Test).unwrap();
    let e = &expected()["images"];
    assert_eq!(set.len() as u64, e["count"].as_u64().unwrap(), "four images, the text file ignored");
    assert_eq!(set.shape, [3, 32, 32]);
    assert!(set.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
    // The first file (sorted) is already 32×32 RGB: exact pixels.
    let first = stages::data::ImageSet {
        pixels: set.image(0).to_vec(),
        labels: vec![0],
        shape: set.shape,
        num_classes: 0,
    };
    assert_pixels(&first, &e["first_checks"]);
    // The grey image has three equal planes.
    let grey = set.image(1);
    assert_eq!(&grey[..1024], &grey[1024..2048]);
    let limited = DatasetSpec::from_json(serde_json::json!({"format": "image-folder", "root": fixtures().join("images"), "limit": 2, "size": 16}))
        .unwrap()
        .load(Split::Test)
        .unwrap();
    assert_eq!((limited.len(), limited.shape), (2, [3, 16, 16]));
}

#[test]
fn malformed_or_missing_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing =
        DatasetSpec::from_json(serde_json::json!({"format": "cifar10-bin", "root": dir.path()})).unwrap();
    let err = missing.load(Split::Train).unwrap_err().to_string();
    assert!(err.contains("data_batch_1.bin") && err.contains("pipeline fetch cifar10"), "{err}");
    for name in
        ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]
    {
        std::fs::write(dir.path().join(name), vec![0u8; 3073 + 5]).unwrap();
    }
    let err = missing.load(Split::Train).unwrap_err().to_string();
    assert!(err.contains("data_batch_1.bin") && err.contains("3073-byte records"), "{err}");
    let svhn = DatasetSpec::from_json(serde_json::json!({"format": "svhn-mat", "root": dir.path()})).unwrap();
    assert!(svhn.load(Split::Test).unwrap_err().to_string().contains("test_32x32.mat"));
    std::fs::write(dir.path().join("test_32x32.mat"), b"not a mat file").unwrap();
    assert!(svhn.load(Split::Test).unwrap_err().to_string().contains("MAT header"));
    let folder = DatasetSpec::from_json(
        serde_json::json!({"format": "image-folder", "root": dir.path().join("none")}),
    )
    .unwrap();
    assert!(folder.load(Split::Test).unwrap_err().to_string().contains("missing image folder"));
}

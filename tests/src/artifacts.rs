//! What every [`ArtifactStore`] must do with checkpoints and job files,
//! checked the same way on the local directory, S3 (`moto_server`) and GCS
//! (fake-gcs-server).

use studio_core::ids::JobId;
use studio_core::job::CheckpointRef;
use studio_core::ports::{ArtifactStore, PortError};

fn ckpt(attempt: u32, bytes: &[u8]) -> CheckpointRef {
    use sha2::Digest;
    CheckpointRef {
        attempt,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    }
}

/// Checkpoints are never replaced: an old attempt saving again on its way
/// out (after the next attempt started from what the record names) leaves
/// the named bytes as they were. This is the race a GCE run hit: attempt 1
/// re-uploaded under the same name while attempt 2 read it, and attempt 2
/// failed with "checkpoint of attempt 1 is corrupt".
///
/// Job files: stored by content, read back whole to a file, idempotent,
/// and a missing one is `NotFound`.
pub async fn check_contract(writer: &dyn ArtifactStore, reader: &dyn ArtifactStore, job: &JobId) {
    let first = ckpt(1, b"epoch 2");
    let later = ckpt(1, b"epoch 3, saved on the way out");
    writer
        .put_checkpoint(job, &first, b"epoch 2")
        .await
        .unwrap();
    writer
        .put_checkpoint(job, &later, b"epoch 3, saved on the way out")
        .await
        .unwrap();
    assert_eq!(
        reader.get_checkpoint(job, &first).await.unwrap(),
        b"epoch 2"
    );
    assert_eq!(
        reader.get_checkpoint(job, &later).await.unwrap(),
        b"epoch 3, saved on the way out"
    );
    assert!(matches!(
        reader.get_checkpoint(job, &ckpt(2, b"never saved")).await,
        Err(PortError::NotFound(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &content).unwrap();
    let (sha, size) = studio_core::outputs::hash_file(&src).unwrap();
    assert_eq!(size, content.len() as u64);
    writer.put_blob(job, &sha, &src).await.unwrap();
    writer.put_blob(job, &sha, &src).await.unwrap(); // idempotent
    let dest = dir.path().join("back.bin");
    std::fs::write(
        &dest,
        b"an older, longer file that must be replaced entirely",
    )
    .unwrap();
    reader.get_blob(job, &sha, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    let other = JobId::new(format!("{job}-other")).unwrap();
    assert!(
        matches!(
            reader.get_blob(&other, &sha, &dest).await,
            Err(PortError::NotFound(_))
        ),
        "a job's files are its own"
    );
}

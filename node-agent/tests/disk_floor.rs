//! The free-space floor against a real small disk: an agent whose data
//! directory is a 64 MiB tmpfs keeping 16 MiB free. Filled past the floor,
//! every call that would write more (VM create, pod run, image pull and
//! import) is RESOURCE_EXHAUSTED and leaves nothing behind, while what
//! frees space or writes little still works; with the space back, the same
//! calls succeed, no restart needed. Filled to the last byte, a commit
//! fails: the agent answers UNAVAILABLE and exits for its service manager
//! to restart it, and the restart (once space is back) has every
//! acknowledged change and none of the failed ones.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use node_agent::agent::disk::space_of;
use stratum_testkit::test_agent::{output_text as text, TestAgent};

const FLOOR_MIB: u64 = 16;

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exhausted(out: Output) {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let text = text(&out);
    assert!(
        text.contains("RESOURCE_EXHAUSTED") && text.contains("--min-free-disk"),
        "{text}"
    );
}

/// Fills the file system of `data` until `leave_mib` MiB are free.
fn fill(data: &Path, leave_mib: u64) {
    let available = space_of(data).unwrap().available;
    let size = available.saturating_sub(leave_mib << 20);
    write_filler(&data.join("filler"), size);
}

/// Writes `size` bytes to `filler`, or as many as fit.
fn write_filler(filler: &Path, size: u64) {
    let file = std::fs::File::create(filler).unwrap();
    // tmpfs has no holes to hide in: write the bytes.
    let chunk = vec![0xa5u8; 1 << 20];
    let mut left = size;
    let mut writer = std::io::BufWriter::new(file);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if std::io::Write::write_all(&mut writer, &chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = std::io::Write::flush(&mut writer);
}

fn create_vm(agent: &TestAgent, name: &str, pool: &str) -> Output {
    let args = agent.halting_vm_args(name, pool);
    agent.nodectl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn below_the_floor_writes_are_refused_until_space_returns() {
    let floor = format!("{FLOOR_MIB}MiB");
    let agent = TestAgent::start_on_tmpfs("disk-floor", 64, &["--min-free-disk", &floor]);
    let data = agent.dir.join("data");
    let pool = ok(agent.nodectl(&["-o", "json", "pool", "create", "team"]));
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    let pool = pool["id"].as_str().unwrap().to_string();
    ok(create_vm(&agent, "before", &pool));

    fill(&data, FLOOR_MIB / 2);
    exhausted(create_vm(&agent, "refused", &pool));
    exhausted(agent.nodectl(&["image", "pull", "127.0.0.1:1/nothing:1"]));
    let archive = agent.dir.join("image.tar");
    std::fs::write(&archive, b"not even read").unwrap();
    exhausted(agent.nodectl(&["image", "import", archive.to_str().unwrap()]));
    exhausted(agent.nodectl(&[
        "pod",
        "run",
        "web",
        "--pool",
        &pool,
        "--image",
        "busybox:latest",
    ]));
    // Nothing of the refused calls was made.
    let vms = ok(agent.nodectl(&["vm", "list"]));
    assert!(vms.contains("before") && !vms.contains("refused"), "{vms}");
    assert!(ok(agent.nodectl(&["pod", "list"])).lines().count() <= 1);
    // Small writes and what frees space still work.
    ok(agent.nodectl(&["pool", "create", "small", "--parent", &pool]));
    let before = vm_id(&agent, "before");
    ok(agent.nodectl(&["vm", "delete", &before]));

    // Space back: the same call succeeds, no restart.
    std::fs::remove_file(data.join("filler")).unwrap();
    ok(create_vm(&agent, "after", &pool));
}

fn vm_id(agent: &TestAgent, name: &str) -> String {
    let list = ok(agent.nodectl(&["-o", "json", "vm", "list"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let vms = list
        .as_array()
        .or_else(|| list["vms"].as_array())
        .unwrap_or_else(|| panic!("vms in {list}"));
    vms.iter()
        .find(|vm| vm["spec"]["name"] == name)
        .and_then(|vm| vm["id"].as_str())
        .unwrap_or_else(|| panic!("{name} in {list}"))
        .to_string()
}

#[test]
fn a_commit_the_full_disk_fails_restarts_the_agent_with_nothing_lost() {
    // No floor: the disk fills to the last byte.
    let mut agent = TestAgent::start_on_tmpfs("disk-full", 32, &["--min-free-disk", "0%"]);
    let data = agent.dir.join("data");
    let kept = ok(agent.nodectl(&["-o", "json", "pool", "create", "kept"]));
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    let kept = kept["id"].as_str().unwrap().to_string();
    write_filler(&data.join("filler"), u64::MAX);
    // Pool creates write a record each; the first that needs a page the
    // disk cannot give fails.
    let mut made = Vec::new();
    let failed = (0..200).find_map(|i| {
        let out = agent.nodectl(&[
            "-o",
            "json",
            "pool",
            "create",
            &format!("p{i}"),
            "--parent",
            &kept,
        ]);
        if out.status.success() {
            let pool: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            made.push(pool["id"].as_str().unwrap().to_string());
            None
        } else {
            Some(text(&out))
        }
    });
    let failed = failed.expect("a commit on a full disk fails");
    println!("{} pool creates committed before: {failed}", made.len());
    assert!(failed.contains("UNAVAILABLE"), "{failed}");
    let status = agent.wait_exit(std::time::Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(75), "{}", agent.log());
    assert!(agent.log().contains("failed a commit"), "{}", agent.log());

    // Space back; the service manager's restart.
    std::fs::remove_file(data.join("filler")).unwrap();
    agent.spawn();
    let list = ok(agent.nodectl(&["-o", "json", "pool", "list"]));
    for id in made.iter().chain([&kept]) {
        assert!(
            list.contains(&format!("\"{id}\"")),
            "acknowledged {id} lost: {list}"
        );
    }
    let pools: serde_json::Value = serde_json::from_str(&list).unwrap();
    let count = pools["pools"].as_array().map_or(0, Vec::len);
    // root, kept and the acknowledged ones: the failed create is not there.
    assert_eq!(count, made.len() + 2, "{list}");
    ok(agent.nodectl(&["pool", "create", "after", "--parent", &kept]));
}

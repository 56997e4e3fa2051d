using Dtrain.Checkpoints;

namespace Dtrain.Tests.Checkpoints;

public class CheckpointStoreTests
{
    [Fact]
    public void Saved_checkpoint_loads_back_identical_under_its_step_file_name()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 3);
        var original = Samples.Checkpoint(250);

        string path = store.Save(original);

        Assert.Equal(dir.File("ckpt-000000250.dtck"), path);
        Samples.AssertSameCheckpoint(original, store.Load(path));
        Samples.AssertSameCheckpoint(original, CheckpointStore.ReadFile(path));
        var latest = store.LoadLatest();
        Assert.NotNull(latest);
        Assert.Equal(path, latest.Path);
        Assert.Empty(latest.Skipped);
        Samples.AssertSameCheckpoint(original, latest.Data);
    }

    [Fact]
    public void Save_creates_a_missing_directory()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(System.IO.Path.Combine(dir.Path, "a", "b"), keepLast: 1);

        string path = store.Save(Samples.Checkpoint(1));

        Assert.True(File.Exists(path));
    }

    [Fact]
    public void List_is_sorted_by_step_with_sizes_and_ignores_other_files()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 10);
        foreach (long step in new long[] { 30, 10, 1_000_000_000, 20 })
            store.Save(Samples.Checkpoint(step));
        File.WriteAllText(dir.File("notes.txt"), "x");
        File.WriteAllText(dir.File("ckpt-12.dtck"), "not canonical");
        File.WriteAllText(dir.File("ckpt-0000000010.dtck"), "not canonical either");

        var list = store.List();

        Assert.Equal([10L, 20, 30, 1_000_000_000], list.Select(c => c.Step));
        Assert.All(list, c => Assert.Equal(new FileInfo(c.Path).Length, c.SizeBytes));
        Assert.Equal(dir.File("ckpt-1000000000.dtck"), list[^1].Path);
    }

    [Fact]
    public void List_and_LoadLatest_of_a_missing_directory_are_empty()
    {
        var store = new CheckpointStore(System.IO.Path.Combine(System.IO.Path.GetTempPath(), "dtrain-missing-" + Guid.NewGuid()), 2);

        Assert.Empty(store.List());
        Assert.Null(store.LoadLatest());
    }

    [Fact]
    public void Only_the_newest_keepLast_checkpoints_are_kept()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 3);

        for (long step = 100; step <= 600; step += 100)
            store.Save(Samples.Checkpoint(step));

        Assert.Equal([400L, 500, 600], store.List().Select(c => c.Step));
        Assert.Equal(600, store.LoadLatest()!.Data.Step);
    }

    [Fact]
    public void Saving_a_lower_step_than_existing_ones_keeps_the_new_file()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 2);
        store.Save(Samples.Checkpoint(100));
        store.Save(Samples.Checkpoint(200));

        store.Save(Samples.Checkpoint(50));

        Assert.Equal([50L, 200], store.List().Select(c => c.Step));
    }

    [Fact]
    public void Saving_the_same_step_again_replaces_the_file()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 2);
        store.Save(Samples.Checkpoint(7, seed: 1));
        var second = Samples.Checkpoint(7, seed: 2);

        store.Save(second);

        Assert.Single(store.List());
        Samples.AssertSameCheckpoint(second, store.LoadLatest()!.Data);
    }

    [Fact]
    public void Flipped_byte_is_detected_and_older_checkpoint_is_used()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        var older = Samples.Checkpoint(100);
        store.Save(older);
        string newest = store.Save(Samples.Checkpoint(200));
        var bytes = File.ReadAllBytes(newest);
        bytes[bytes.Length / 2] ^= 0x01;
        File.WriteAllBytes(newest, bytes);

        var ex = Assert.Throws<CorruptCheckpointException>(() => store.Load(newest));
        Assert.Equal(newest, ex.Path);
        Assert.Contains(newest, ex.Message);
        Assert.Contains("checksum mismatch", ex.Message);

        var latest = store.LoadLatest();
        Assert.NotNull(latest);
        Samples.AssertSameCheckpoint(older, latest.Data);
        var skipped = Assert.Single(latest.Skipped);
        Assert.Equal(newest, skipped.Path);
        Assert.Contains("checksum mismatch", skipped.Reason);
    }

    [Fact]
    public void Several_corrupt_newer_files_are_all_skipped_and_reported()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        store.Save(Samples.Checkpoint(1));
        string truncated = store.Save(Samples.Checkpoint(2));
        string garbage = store.Save(Samples.Checkpoint(3));
        using (var f = new FileStream(truncated, FileMode.Open))
            f.SetLength(f.Length / 2);
        File.WriteAllText(garbage, "hello, this is not a checkpoint file");

        var latest = store.LoadLatest();

        Assert.NotNull(latest);
        Assert.Equal(1, latest.Data.Step);
        Assert.Equal([garbage, truncated], latest.Skipped.Select(s => s.Path));
        Assert.Contains("bad magic", latest.Skipped[0].Reason);
        Assert.Contains("truncated", latest.Skipped[1].Reason);
    }

    [Fact]
    public void LoadLatest_returns_null_when_every_file_is_corrupt_and_never_loads_one()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        string only = store.Save(Samples.Checkpoint(1));
        File.WriteAllBytes(only, []);

        Assert.Null(store.LoadLatest());
    }

    [Fact]
    public void A_file_whose_contents_disagree_with_its_name_is_skipped()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        store.Save(Samples.Checkpoint(1));
        string step2 = store.Save(Samples.Checkpoint(2));
        string renamed = dir.File(CheckpointStore.FileName(9));
        File.Move(step2, renamed);

        var latest = store.LoadLatest();

        Assert.Equal(1, latest!.Data.Step);
        Assert.Equal(renamed, Assert.Single(latest.Skipped).Path);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    [InlineData(-2)] // half
    [InlineData(-1)] // all but one byte
    public void Truncated_file_is_detected_and_named(int length)
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        string path = store.Save(Samples.Checkpoint(11));
        long full = new FileInfo(path).Length;
        long keep = length switch { -2 => full / 2, -1 => full - 1, _ => length };
        using (var f = new FileStream(path, FileMode.Open))
            f.SetLength(keep);

        var ex = Assert.Throws<CorruptCheckpointException>(() => CheckpointStore.ReadFile(path));

        Assert.Equal(path, ex.Path);
        Assert.Contains(path, ex.Message);
        Assert.Contains("truncated", ex.Reason);
        Assert.Null(store.LoadLatest());
    }

    [Fact]
    public void Stale_tmp_files_are_ignored_by_List_and_LoadLatest_and_removed_by_Save()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        store.Save(Samples.Checkpoint(1));
        // A torn write of a newer step, as left by a crash, with a complete-looking prefix.
        var full = Samples.Serialize(Samples.Checkpoint(2));
        string stale = dir.File(".ckpt-000000002-0123456789abcdef0123456789abcdef.tmp");
        File.WriteAllBytes(stale, full[..(full.Length / 2)]);
        string staleComplete = dir.File(".ckpt-000000003-fedcba9876543210fedcba9876543210.tmp");
        File.WriteAllBytes(staleComplete, Samples.Serialize(Samples.Checkpoint(3)));

        Assert.Equal([1L], store.List().Select(c => c.Step));
        var latest = store.LoadLatest();
        Assert.Equal(1, latest!.Data.Step);
        Assert.Empty(latest.Skipped);

        store.Save(Samples.Checkpoint(4));

        Assert.False(File.Exists(stale));
        Assert.False(File.Exists(staleComplete));
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));
        Assert.Equal([1L, 4], store.List().Select(c => c.Step));
    }

    [Fact]
    public void Invalid_store_arguments_are_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new CheckpointStore("/tmp/x", keepLast: 0));
        Assert.Throws<ArgumentException>(() => new CheckpointStore(" ", keepLast: 1));
    }
}

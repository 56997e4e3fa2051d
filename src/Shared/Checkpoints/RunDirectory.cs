using System.Globalization;

namespace Dtrain.Checkpoints;

/// <summary>
/// A run directory (a spec's <c>output</c>, <c>train --output</c>, <c>runs/NAME</c>): the checkpoints of local
/// training in <c>checkpoints/</c>, and the model <c>dtrain cluster run</c> downloads as <c>model.dtck</c>. One run's
/// files at a time: a fresh run moves an earlier run's files aside (<see cref="MoveEarlierRunAside"/>), and a run
/// directory given to eval / predict / generate / <c>train --resume</c> / <c>submit --resume</c> stands for the model
/// written last (<see cref="LoadLatest"/>).
/// </summary>
public static class RunDirectory
{
    /// <summary>The sub-directory local training writes its checkpoints to.</summary>
    public const string CheckpointsDir = "checkpoints";
    /// <summary>The final model <c>dtrain cluster run</c> saves into the run directory.</summary>
    public const string ModelFile = "model.dtck";
    /// <summary>Prefix of the sub-directory an earlier run's files are moved to: <c>earlier-20260101T120000Z</c>.</summary>
    public const string EarlierPrefix = "earlier-";

    /// <summary>Where a run directory's checkpoints are: its checkpoints/ folder, or the directory itself when it has none.</summary>
    public static string CheckpointFolder(string runDir)
    {
        var sub = Path.Combine(runDir, CheckpointsDir);
        return Directory.Exists(sub) ? sub : runDir;
    }

    /// <summary>
    /// The model a run directory stands for: of the newest valid checkpoint in its checkpoints/ (highest step) and its
    /// model.dtck, the one written last; null when neither holds a valid checkpoint. Corrupt files passed over are
    /// listed in <see cref="LoadResult.Skipped"/>.
    /// </summary>
    public static LoadResult? LoadLatest(string runDir)
    {
        var folder = CheckpointFolder(runDir);
        var fromStore = new CheckpointStore(folder, int.MaxValue).LoadLatest();
        var skipped = new List<SkippedCheckpoint>(fromStore?.Skipped ?? []);
        LoadResult? model = null;
        foreach (var dir in folder == runDir ? [runDir] : new[] { runDir, folder })
        {
            var path = Path.Combine(dir, ModelFile);
            if (!File.Exists(path)) continue;
            try
            {
                var candidate = new LoadResult(path, CheckpointStore.ReadFile(path), []);
                if (model is null || File.GetLastWriteTimeUtc(path) > File.GetLastWriteTimeUtc(model.Path)) model = candidate;
            }
            catch (CorruptCheckpointException ex)
            {
                skipped.Add(new SkippedCheckpoint(path, ex.Reason));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                skipped.Add(new SkippedCheckpoint(path, $"unreadable: {ex.Message}"));
            }
        }
        var best = (fromStore, model) switch
        {
            (null, null) => null,
            (null, { } m) => m,
            ({ } s, null) => s,
            ({ } s, { } m) => File.GetLastWriteTimeUtc(m.Path) > File.GetLastWriteTimeUtc(s.Path) ? m : s,
        };
        return best is null ? null : best with { Skipped = skipped };
    }

    /// <summary>What to say when <see cref="LoadLatest"/> found nothing in <paramref name="runDir"/>: where it looked, and the earlier runs moved aside there, if any.</summary>
    public static string NothingIn(string runDir)
    {
        var earlier = Directory.Exists(runDir)
            ? Directory.GetDirectories(runDir, EarlierPrefix + "*").Order(StringComparer.Ordinal).ToList()
            : [];
        return $"no valid checkpoint in {runDir} (looked for {CheckpointsDir}/ckpt-*.dtck and {ModelFile})" +
            (earlier.Count == 0 ? "" : $"; earlier runs moved aside there: {string.Join(", ", earlier)}");
    }

    /// <summary>
    /// Before a fresh run (not a resume) writes into <paramref name="runDir"/>: when it holds an earlier run's files
    /// (checkpoints in checkpoints/, model.dtck), moves them into a new <c>earlier-{UTC time}</c> sub-directory so the
    /// new run's files cannot mix with them, and returns that directory; null when there was nothing to move.
    /// Nothing is deleted. With <paramref name="checkpointsOnly"/>, model.dtck stays (a resume from it).
    /// </summary>
    public static string? MoveEarlierRunAside(string runDir, DateTime utcNow, bool checkpointsOnly = false)
    {
        var checkpoints = Path.Combine(runDir, CheckpointsDir);
        var model = Path.Combine(runDir, ModelFile);
        var hasCheckpoints = Directory.Exists(checkpoints) && Directory.EnumerateFileSystemEntries(checkpoints)
            .Any(p => !Path.GetFileName(p).StartsWith(".ckpt-", StringComparison.Ordinal));
        var hasModel = !checkpointsOnly && File.Exists(model);
        if (!hasCheckpoints && !hasModel) return null;

        var stamp = utcNow.ToUniversalTime().ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture);
        var target = Path.Combine(runDir, EarlierPrefix + stamp);
        for (var n = 2; Directory.Exists(target) || File.Exists(target); n++)
            target = Path.Combine(runDir, $"{EarlierPrefix}{stamp}-{n}");
        Directory.CreateDirectory(target);
        if (hasCheckpoints) Directory.Move(checkpoints, Path.Combine(target, CheckpointsDir));
        if (hasModel) File.Move(model, Path.Combine(target, ModelFile));
        DirectorySync.Fsync(runDir);
        return target;
    }
}

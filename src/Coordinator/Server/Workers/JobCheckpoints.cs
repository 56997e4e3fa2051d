using Dtrain.Checkpoints;

namespace Dtrain.Server;

/// <summary>
/// Where a job's checkpoints go, whichever driver captured them: the ledger's steps up to the checkpoint's are on disk
/// before its file is (a coordinator killed right after resumes from this file, and its ledger must already hold every
/// step the file includes); the job's progress names the file, its size and how long saving took.
/// </summary>
public sealed class JobCheckpoints(JobRecord job, TimeProvider? clock = null)
{
    private readonly TimeProvider clock = clock ?? TimeProvider.System;
    private readonly CheckpointStore store = new(Path.Combine(job.Dir, "checkpoints"), job.Spec.Training.KeepCheckpoints, ownerOnly: true);

    /// <param name="started">When capturing it began (<see cref="TimeProvider.GetTimestamp"/>), for the time it took.</param>
    public void Save(CheckpointData data, long step, long started, string from = "")
    {
        job.Store?.Flush();
        var path = store.Save(data);
        var size = new FileInfo(path).Length;
        var seconds = clock.GetElapsedTime(started).TotalSeconds;
        job.Update(p => p with { Checkpoint = path, CheckpointSeconds = seconds, CheckpointBytes = size }, publishState: false);
        job.Log($"step {step}: checkpoint {path}{from}");
    }

    public long Now() => clock.GetTimestamp();
}

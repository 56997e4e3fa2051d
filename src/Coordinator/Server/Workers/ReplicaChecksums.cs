using Dtrain.Distributed;

namespace Dtrain.Server;

/// <summary>
/// Replicas must hold the same parameters: the checksums the workers report (slot = replica × stages + stage; a
/// data-parallel job has one stage) are compared with replica 0's of the same stage.
/// </summary>
public static class ReplicaChecksums
{
    public static void Check(JobWorkers workers, IReadOnlyList<double> sums, int stages, string when)
    {
        var replicas = sums.Count / stages;
        for (var s = 0; s < stages; s++)
        {
            var first = sums[s];
            for (var r = 1; r < replicas; r++)
            {
                var other = sums[r * stages + s];
                if (ParameterChecksums.Agree(other, first)) continue;
                throw new JobFailure(stages == 1
                    ? $"replicas diverged {when}: worker {workers.Members[r].Id} (rank {r}) parameter checksum {other:R} != {first:R} of worker {workers.Members[0].Id} (rank 0)"
                    : $"replicas of stage {s} diverged {when}: worker {workers.Members[r * stages + s].Id} (replica {r}) checksum {other:R} != {first:R} of worker {workers.Members[s].Id} (replica 0)");
            }
        }
    }
}

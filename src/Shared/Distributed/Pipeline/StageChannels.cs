using System.Globalization;

namespace Dtrain.Distributed.Pipeline;

/// <summary>
/// Channel ids of pipeline stage links: each directed link (replica, from-stage → to-stage) of a job is a channel of
/// its own in <see cref="Collective.RingMailboxes"/>, negotiated and fenced by generation exactly like the job's ring (whose
/// channel id is the job id itself).
/// </summary>
public static class StageChannels
{
    /// <summary>"JOB|stage FROM->TO replica R": the channel of one directed stage link.</summary>
    public static string Link(string jobId, int replica, int fromStage, int toStage) =>
        string.Create(CultureInfo.InvariantCulture, $"{jobId}|stage {fromStage}->{toStage} replica {replica}");
}

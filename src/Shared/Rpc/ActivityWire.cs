using Dtrain.Distributed;

namespace Dtrain.Rpc;

/// <summary>A worker's activity on the wire: what its heartbeat carries and what the coordinator's listings show.</summary>
public static class ActivityWire
{
    /// <summary>The activity as the membership protocol carries it (the time in phase in whole milliseconds).</summary>
    public static Protos.Membership.WorkerActivity ToProto(this ActivitySnapshot a) => new()
    {
        Phase = a.Phase,
        Detail = a.Detail,
        Step = a.Step,
        InPhaseMs = (long)a.InPhase.TotalMilliseconds,
        WaitingOn = a.WaitingOn,
        JobId = a.JobId,
        SubPhase = a.SubPhase,
        Piece = a.Piece,
        Pieces = a.Pieces,
        Transport = a.Transport,
    };
}

using Dtrain.Protos.Jobs;

namespace Dtrain.Server;

/// <summary>The service edge: domain types to the protos the gRPC services answer with (and nowhere else).</summary>
public static class ProtoMapper
{
    public static WorkerState ToProto(this MembershipState state) => state switch
    {
        MembershipState.Joining => WorkerState.Joining,
        MembershipState.Idle => WorkerState.Idle,
        MembershipState.Training => WorkerState.Training,
        MembershipState.Draining => WorkerState.Draining,
        MembershipState.Cordoned => WorkerState.Cordoned,
        MembershipState.Lost => WorkerState.Lost,
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "no proto state for it"),
    };

    public static JobState ToProto(this JobStatus status) => status switch
    {
        JobStatus.Queued => JobState.Queued,
        JobStatus.Preparing => JobState.Preparing,
        JobStatus.Running => JobState.Running,
        JobStatus.Waiting => JobState.Waiting,
        JobStatus.Succeeded => JobState.Succeeded,
        JobStatus.Failed => JobState.Failed,
        JobStatus.Cancelled => JobState.Cancelled,
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, "no proto state for it"),
    };

    /// <summary>A stored job's state (the job store keeps the proto record).</summary>
    public static JobStatus FromProto(JobState state) => state switch
    {
        JobState.Queued => JobStatus.Queued,
        JobState.Preparing => JobStatus.Preparing,
        JobState.Running => JobStatus.Running,
        JobState.Waiting => JobStatus.Waiting,
        JobState.Succeeded => JobStatus.Succeeded,
        JobState.Failed => JobStatus.Failed,
        JobState.Cancelled => JobStatus.Cancelled,
        _ => throw new InvalidDataException($"unknown job state {state}"),
    };

    public static WorkerInfo ToInfo(this WorkerRecord w) => new()
    {
        WorkerId = w.Id,
        Name = w.Name,
        Address = w.Address,
        State = w.State.ToProto(),
        JobId = w.JobId,
        Cores = w.Capabilities.Cores,
        Device = w.Capabilities.Device,
        MemoryBytes = w.Capabilities.MemoryBytes,
        Threads = w.Capabilities.Threads,
        LastHeartbeatUnixMs = w.LastHeartbeat.ToUnixTimeMilliseconds(),
        RegisteredUnixMs = w.Registered.ToUnixTimeMilliseconds(),
        Cordoned = w.Cordoned,
        Message = w.Message,
    };
}

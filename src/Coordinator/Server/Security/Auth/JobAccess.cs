using Grpc.Core;

namespace Dtrain.Server.Auth;

/// <summary>
/// Per-job authorization for <see cref="JobsService"/>: a submitter reaches only the jobs submitted under its token
/// name. Another's job answers NotFound with exactly the message of a job that does not exist — job ids are
/// sequential, and PermissionDenied would confirm that job-0042 exists (GitHub answers 404 for private repositories
/// for the same reason). The refusal is audited.
/// </summary>
public sealed class JobAccess(JobManager jobs, AuditLog audit)
{
    public static string NotFoundMessage(string id) => $"no job \"{id}\"; `dtrain list` shows the known jobs";

    /// <summary>The job, if the caller may see it; NotFound otherwise.</summary>
    public JobRecord Job(ServerCallContext context, string id, string action)
    {
        var caller = Caller.Of(context);
        var job = jobs.Get(id);
        if (caller.CanSee(job)) return job;
        audit.Write("job.denied", caller, context.Peer, ("job", id), ("owner", job.Owner), ("action", action));
        throw new RpcException(new Status(StatusCode.NotFound, NotFoundMessage(id)));
    }

    /// <summary>The jobs the caller may see, in id order.</summary>
    public IEnumerable<JobRecord> Visible(ServerCallContext context)
    {
        var caller = Caller.Of(context);
        return jobs.List().Where(caller.CanSee);
    }

    /// <summary>Writes an audit line for the caller of <paramref name="context"/>.</summary>
    public void Record(ServerCallContext context, string @event, params (string Key, object? Value)[] fields) =>
        audit.Write(@event, Caller.Of(context), context.Peer, fields);
}

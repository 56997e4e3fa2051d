using System.Runtime.CompilerServices;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server.Auth;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>The CLI's API: submit, inspect, watch, cancel and download jobs; list workers. Behind <see cref="AuthInterceptor"/>; per-job access through <see cref="JobAccess"/>.</summary>
public sealed class JobsService(JobManager jobs, WorkerRegistry registry, UploadStore uploads, ICallerIdentity identity, JobAccess access, StallMonitor stalls, TimeProvider clock, Microsoft.Extensions.Hosting.IHostApplicationLifetime lifetime, ClusterPrepare prepare) : Jobs.JobsBase
{
    /// <summary>`dtrain prepare --on-cluster`: progress lines as they happen, then the manifest (<see cref="ClusterPrepare"/>).</summary>
    public override async Task Prepare(PrepareRequest request, IServerStreamWriter<PrepareEvent> responseStream, ServerCallContext context)
    {
        access.Record(context, "dataset.prepare", ("output", request.Output), ("sources", request.Sources.Count), ("validation", request.Validation.Count));
        var lines = System.Threading.Channels.Channel.CreateUnbounded<string>();
        var run = Task.Run(async () =>
        {
            try
            {
                return await prepare.RunAsync(request, line => lines.Writer.TryWrite(line), context.CancellationToken).ConfigureAwait(false);
            }
            finally
            {
                lines.Writer.TryComplete();
            }
        });
        await foreach (var line in lines.Reader.ReadAllAsync(context.CancellationToken).ConfigureAwait(false))
            await responseStream.WriteAsync(new PrepareEvent { Message = line }).ConfigureAwait(false);
        Dtrain.Data.Datasets.DatasetManifest manifest;
        try
        {
            manifest = await run.ConfigureAwait(false);
        }
        catch (ClusterPrepare.Refusal e)
        {
            throw new RpcException(new Status(e.Code, e.Message));
        }
        await responseStream.WriteAsync(new PrepareEvent { ManifestJson = System.Text.Json.JsonSerializer.Serialize(manifest, Dtrain.Data.Datasets.DatasetLayout.Json) }).ConfigureAwait(false);
    }

    public override async Task<UploadReply> Upload(IAsyncStreamReader<FileChunk> requestStream, ServerCallContext context)
    {
        UploadedFile file;
        try
        {
            file = await uploads.ReceiveAsync(Chunks(requestStream, context.CancellationToken), identity.Of(context), context.CancellationToken).ConfigureAwait(false);
        }
        catch (RefusedException e)
        {
            throw e.ToRpc();
        }
        access.Record(context, "data.upload", ("file", file.FileId), ("bytes", file.Bytes));
        return new UploadReply { FileId = file.FileId, Bytes = file.Bytes };
    }

    private static async IAsyncEnumerable<UploadChunk> Chunks(IAsyncStreamReader<FileChunk> stream, [EnumeratorCancellation] CancellationToken cancel)
    {
        await foreach (var c in stream.ReadAllAsync(cancel).ConfigureAwait(false)) yield return new UploadChunk(c.Name, c.TotalBytes, c.Data.Memory);
    }

    public override Task<SubmitReply> Submit(SubmitRequest request, ServerCallContext context)
    {
        // Resuming a job hands its model to the new one: only who may see that job may resume it. A job known only
        // from the data directory (an earlier coordinator run) has no recorded owner: admins only.
        if (request.ResumeJob != "")
        {
            if (jobs.Knows(request.ResumeJob)) access.Job(context, request.ResumeJob, "resume");
            else if (Caller.Of(context).Role != Role.Admin) throw new RpcException(new Status(StatusCode.NotFound, JobAccess.NotFoundMessage(request.ResumeJob)));
        }
        JobRecord job;
        try
        {
            job = jobs.Submit(request.FromProto(), Caller.Of(context).Name);
        }
        catch (RefusedException e)
        {
            throw e.ToRpc();
        }
        access.Record(context, "job.submit", ("job", job.Id), ("name", job.Spec.Name), ("workers", request.Workers), ("source", request.Source));
        return Task.FromResult(new SubmitReply { JobId = job.Id });
    }

    public override Task<JobInfo> Get(GetJobRequest request, ServerCallContext context)
    {
        var job = access.Job(context, request.JobId, "get");
        return Task.FromResult(job.ToProto(stalls.Describe(job, names: Caller.Of(context).Role != Role.Submitter)));
    }

    public override Task<ListJobsReply> List(ListJobsRequest request, ServerCallContext context)
    {
        var reply = new ListJobsReply();
        var visible = access.Visible(context).ToList();
        reply.Jobs.AddRange(visible.Select(j => j.ToProto()));
        reply.Storage.AddRange(jobs.StorageOf(visible).Select(s => new OwnerStorage { Owner = s.Owner, StoredBytes = s.Bytes, QuotaBytes = s.Quota }));
        return Task.FromResult(reply);
    }

    public override Task<JobInfo> Cancel(CancelJobRequest request, ServerCallContext context)
    {
        var before = access.Job(context, request.JobId, "cancel").Status;
        var job = jobs.Cancel(request.JobId);
        access.Record(context, "job.cancel", ("job", job.Id), ("owner", job.Owner), ("state", before.ToString().ToLowerInvariant()));
        return Task.FromResult(job.ToProto());
    }

    public override async Task Watch(WatchJobRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context)
    {
        var job = access.Job(context, request.JobId, "watch");
        var reader = job.Watch();
        // A stopping coordinator ends its watches at once (Unavailable: `dtrain watch` reconnects to the next one).
        // Kestrel's graceful shutdown waits for open streams while it refuses new calls, heartbeats included: an open
        // watch kept it waiting until the job's workers counted as lost and the job failed for good.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, lifetime.ApplicationStopping);
        try
        {
            // The stream ends between events (the read is cancelled), never inside a write: a write cancelled part way
            // leaves the response half written and the server resets the stream, which the client sees as Cancelled
            // instead of the status that ended it (Unauthenticated for a revoked token, Unavailable while stopping).
            await foreach (var e in reader.ReadAllAsync(stop.Token).ConfigureAwait(false))
                await responseStream.WriteAsync(job.ToProto(e)).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (lifetime.ApplicationStopping.IsCancellationRequested && !context.CancellationToken.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "the coordinator is shutting down; watch again once it is back"));
        }
        finally
        {
            job.Unwatch(reader);
        }
    }

    public override Task<ListWorkersReply> ListWorkers(ListWorkersRequest request, ServerCallContext context)
    {
        registry.Sweep();
        var reply = new ListWorkersReply();
        var now = clock.GetUtcNow();
        var stalled = stalls.StalledWorkers();
        reply.Workers.AddRange(registry.Snapshot().Select(w => new WorkerView(w, now, stalled.Contains(w.Id)).ToInfo()));
        return Task.FromResult(reply);
    }

    public override Task<WorkerInfo> CordonWorker(WorkerRequest request, ServerCallContext context) => Task.FromResult(Cordon(request, context, drain: false));

    public override Task<WorkerInfo> DrainWorker(WorkerRequest request, ServerCallContext context) => Task.FromResult(Cordon(request, context, drain: true));

    public override Task<WorkerInfo> UncordonWorker(WorkerRequest request, ServerCallContext context)
    {
        var w = registry.Uncordon(request.Worker, By(context));
        access.Record(context, "worker.uncordon", ("worker", w.Id), ("name", w.Name), ("address", w.Address));
        return Task.FromResult(w.ToInfo());
    }

    private WorkerInfo Cordon(WorkerRequest request, ServerCallContext context, bool drain)
    {
        var w = registry.Cordon(request.Worker, drain, By(context));
        access.Record(context, drain ? "worker.drain" : "worker.cordon", ("worker", w.Id), ("name", w.Name), ("address", w.Address), ("job", w.JobId == "" ? null : w.JobId));
        return w.ToInfo();
    }

    /// <summary>Who cordons or drains, for the worker listing: the token's name, or "an admin" when auth is off.</summary>
    private static string By(ServerCallContext context) => Caller.Of(context) is { Authenticated: true } c ? c.Name : "an admin";

    public override Task<LedgerReply> Ledger(GetJobRequest request, ServerCallContext context) =>
        Task.FromResult(ProtoMapper.ToProto(access.Job(context, request.JobId, "ledger").Ledger.Snapshot()));

    public override Task<JobHistory> History(GetJobRequest request, ServerCallContext context)
    {
        var job = access.Job(context, request.JobId, "history");
        var reply = new JobHistory();
        reply.Events.AddRange(job.History().Select(ProtoMapper.EventOf));
        reply.Job = job.ToProto();
        return Task.FromResult(reply);
    }

    public override async Task Download(DownloadRequest request, IServerStreamWriter<FileChunk> responseStream, ServerCallContext context)
    {
        var job = access.Job(context, request.JobId, "download");
        var path = job.Progress.Checkpoint;
        if (string.IsNullOrEmpty(path) || !File.Exists(path))
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {request.JobId} has no checkpoint yet (state {job.Status.ToString().ToLowerInvariant()})"));
        long sent = 0;
        var complete = false;
        try
        {
            foreach (var chunk in FileChunks.Read(path, 1024 * 1024))
            {
                await responseStream.WriteAsync(chunk, context.CancellationToken).ConfigureAwait(false);
                sent += chunk.Data.Length;
            }
            complete = true;
        }
        finally
        {
            access.Record(context, "job.download", ("job", job.Id), ("owner", job.Owner), ("checkpoint", path), ("bytes", sent), ("complete", complete));
        }
    }
}

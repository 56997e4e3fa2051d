using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>The CLI's API: submit, inspect, watch, cancel and download jobs; list workers.</summary>
public sealed class JobsService(JobManager jobs, WorkerRegistry registry, UploadStore uploads) : Jobs.JobsBase
{
    public override Task<UploadReply> Upload(IAsyncStreamReader<FileChunk> requestStream, ServerCallContext context) =>
        uploads.ReceiveAsync(requestStream, context);

    public override Task<SubmitReply> Submit(SubmitRequest request, ServerCallContext context) =>
        Task.FromResult(new SubmitReply { JobId = jobs.Submit(request).Id });

    public override Task<JobInfo> Get(GetJobRequest request, ServerCallContext context) =>
        Task.FromResult(jobs.Get(request.JobId).Snapshot());

    public override Task<ListJobsReply> List(ListJobsRequest request, ServerCallContext context)
    {
        var reply = new ListJobsReply();
        reply.Jobs.AddRange(jobs.List().Select(j => j.Snapshot()));
        return Task.FromResult(reply);
    }

    public override Task<JobInfo> Cancel(CancelJobRequest request, ServerCallContext context) =>
        Task.FromResult(jobs.Cancel(request.JobId).Snapshot());

    public override async Task Watch(WatchJobRequest request, IServerStreamWriter<JobEvent> responseStream, ServerCallContext context)
    {
        var job = jobs.Get(request.JobId);
        var reader = job.Watch();
        try
        {
            await foreach (var e in reader.ReadAllAsync(context.CancellationToken).ConfigureAwait(false))
                await responseStream.WriteAsync(e, context.CancellationToken).ConfigureAwait(false);
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
        reply.Workers.AddRange(registry.Snapshot().Select(w => w.ToInfo()));
        return Task.FromResult(reply);
    }

    public override Task<LedgerReply> Ledger(GetJobRequest request, ServerCallContext context) =>
        Task.FromResult(jobs.Get(request.JobId).Ledger.Snapshot());

    public override async Task Download(DownloadRequest request, IServerStreamWriter<FileChunk> responseStream, ServerCallContext context)
    {
        var job = jobs.Get(request.JobId);
        var path = job.Snapshot().Checkpoint;
        if (string.IsNullOrEmpty(path) || !File.Exists(path))
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {request.JobId} has no checkpoint yet (state {job.Snapshot().State})"));
        foreach (var chunk in FileChunks.Read(path, 1024 * 1024))
            await responseStream.WriteAsync(chunk, context.CancellationToken).ConfigureAwait(false);
    }
}

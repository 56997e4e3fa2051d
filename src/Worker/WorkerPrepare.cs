using System.Text.Json;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Protos.Worker;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>
/// This worker's share of `dtrain prepare --on-cluster` (docs/data.md): counting the tokens of a part of the sources,
/// then encoding it into shards in the dataset's temporary directory, on every core, off the gRPC threads. The paths
/// are the coordinator's, which the worker must see at the same path (a shared data root); errors name the file.
/// The calls of a prepare are tracked by its id: when the coordinator releases the prepare (it failed or was cancelled)
/// they are cancelled, and the release answers once they have ended — once nothing more is written into the temporary
/// directory, which the coordinator deletes next; a call of a released prepare that arrives late is refused.
/// </summary>
public sealed class WorkerPrepare(ILogger<WorkerPrepare> log)
{
    // Released prepares remembered, to refuse their late calls: the newest ones (a prepare is released once).
    const int Remembered = 256;
    readonly Lock gate = new();
    readonly Dictionary<string, Run> runs = [];
    readonly HashSet<string> released = [];
    readonly Queue<string> releasedOrder = new();

    /// <summary>The calls of one prepare running here.</summary>
    sealed class Run
    {
        public readonly CancellationTokenSource Cancel = new();
        public readonly TaskCompletionSource Ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int Calls;
    }

    static PrepareOptions Part(string json)
    {
        PrepareOptions o;
        try
        {
            o = DatasetPreparer.PartFromJson(json);
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"the prepare options are not valid JSON: {e.Message}");
        }
        return o with { Threads = Environment.ProcessorCount };
    }

    public Task<PrepareCountReply> CountAsync(PrepareCountRequest request, CancellationToken cancel) => TrackAsync(request.PrepareId, cancel, async token =>
    {
        var part = Part(request.OptionsJson);
        if (request.Measure)
        {
            var (length, pieces) = await Task.Run(() => DatasetPreparer.MeasurePart(part, token), token).ConfigureAwait(false);
            return new PrepareCountReply { Length = length, TrainPieces = pieces };
        }
        DatasetPreparer.PartCut? at = request.JoinerCounted ? new(request.TrainJoiner, request.Cut, request.AllValidation) : null;
        var counts = await Task.Run(() => DatasetPreparer.CountPart(part, at, token), token).ConfigureAwait(false);
        var reply = new PrepareCountReply { TrainPieces = counts.TrainPieces, ValidationPieces = counts.ValidationPieces };
        reply.Words.Add(counts.Words);
        reply.Chars.Add(counts.Chars);
        reply.TrainLabels.AddRange(counts.TrainLabels);
        return reply;
    });

    public Task<PrepareEncodeReply> EncodeAsync(PrepareEncodeRequest request, CancellationToken cancel) => TrackAsync(request.PrepareId, cancel, async token =>
    {
        var part = Part(request.OptionsJson);
        var state = JsonSerializer.Deserialize<TokenizerState>(request.TokenizerJson, DatasetLayout.TokenizerJson) ?? throw new ArgumentException("no tokenizer");
        var tokenizer = TokenizerFactory.FromState(state);
        var encoded = await Task.Run(() => DatasetPreparer.EncodePart(part, request.Part, request.Directory, tokenizer, [.. request.Labels], request.TrainJoiner, request.ValidationJoiner, request.Cut, request.AllValidation, token), token).ConfigureAwait(false);
        return new PrepareEncodeReply { ResultJson = JsonSerializer.Serialize(encoded, DatasetLayout.Json) };
    });

    /// <summary>
    /// The coordinator releases <paramref name="prepareId"/>: its calls here are cancelled, and the task ends once they
    /// have all ended (the work of a call runs to its next chunk at most). Later calls of it are refused. Any id may be
    /// released (a job's release passes here too); one with no call running here ends at once.
    /// </summary>
    public Task ReleaseAsync(string prepareId)
    {
        Run? run;
        lock (gate)
        {
            if (released.Add(prepareId))
            {
                releasedOrder.Enqueue(prepareId);
                if (releasedOrder.Count > Remembered) released.Remove(releasedOrder.Dequeue());
            }
            if (!runs.TryGetValue(prepareId, out run)) return Task.CompletedTask;
        }
        log.LogInformation("{Id}: released by the coordinator; stopping its {Calls} call(s)", prepareId, Volatile.Read(ref run.Calls));
        run.Cancel.Cancel();
        return run.Ended.Task;
    }

    async Task<T> TrackAsync<T>(string prepareId, CancellationToken call, Func<CancellationToken, Task<T>> work)
    {
        Run? run;
        lock (gate)
        {
            if (released.Contains(prepareId))
                throw new InvalidOperationException($"{prepareId} was released by the coordinator (it failed or was cancelled); this call came after it");
            if (!runs.TryGetValue(prepareId, out run)) runs[prepareId] = run = new Run();
            run.Calls++;
        }
        try
        {
            using var either = CancellationTokenSource.CreateLinkedTokenSource(call, run.Cancel.Token);
            return await work(either.Token).ConfigureAwait(false);
        }
        finally
        {
            var ended = false;
            lock (gate)
            {
                if (--run.Calls == 0)
                {
                    runs.Remove(prepareId);
                    ended = true;
                }
            }
            // Its token source is not disposed: a release may be cancelling it right now.
            if (ended) run.Ended.TrySetResult();
        }
    }
}

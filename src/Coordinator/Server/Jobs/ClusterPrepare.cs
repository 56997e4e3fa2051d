using System.Text.Json;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// `dtrain prepare --on-cluster` (docs/data.md): the idle workers prepare a dataset from sources under the data roots.
/// The sources, in order, are cut into contiguous parts of about equal bytes, one per worker; each worker counts its
/// part's tokens; the counts are merged here into the tokenizer exactly as a local prepare fits it; each worker encodes
/// its part into shards in the dataset's temporary directory beside the output; the shards are renamed in part order
/// and the manifest is written last (the shards' sizes and SHA-256 as the workers reported them), then the directory is
/// moved into place. A worker that fails fails the prepare, naming it and its files: nothing is moved into place.
/// </summary>
public sealed class ClusterPrepare(DataAccess data, WorkerRegistry registry, WorkerClients clients, TimeProvider clock, ILogger<ClusterPrepare> log)
{
    /// <summary>Refused before any worker is asked (the call's status: InvalidArgument, or FailedPrecondition with no idle worker).</summary>
    public sealed class Refusal(StatusCode code, string message) : Exception(message)
    {
        public StatusCode Code { get; } = code;
    }

    /// <summary>Prepares the dataset <paramref name="request"/> describes; <paramref name="progress"/> is told of each step.</summary>
    public async Task<DatasetManifest> RunAsync(PrepareRequest request, Action<string> progress, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(progress);
        var started = clock.GetTimestamp();
        var o = Options(request);
        var prepareId = $"prepare-{Guid.NewGuid():N}"[..16];
        var workers = registry.TryReserve(0, prepareId)
            ?? throw new Refusal(StatusCode.FailedPrecondition, $"no idle worker to prepare on ({registry.Capacity().Live} registered, none idle); start workers (`dtrain worker`) or wait for the running jobs, or prepare locally without --on-cluster");
        try
        {
            using var writer = Writer(o);
            var all = o.Train.Concat(o.Validation).ToList();
            var sizes = all.Select(s => new FileInfo(s.Path).Length).ToList();
            var parts = Split(all, sizes, workers.Count);
            progress($"{prepareId}: {all.Count} source file(s), {sizes.Sum():N0} bytes, in {parts.Count} part(s) on {parts.Count} worker(s) (of {workers.Count} idle)");
            var options = parts.Select(p => o with
            {
                Train = [.. p.Where(s => s.Split == DatasetLayout.TrainSplit)],
                Validation = [.. p.Where(s => s.Split == DatasetLayout.ValidationSplit)],
                Output = writer.Directory,
            }).ToList();
            for (var i = 0; i < parts.Count; i++)
                progress($"  part {i + 1}: worker {Describe(workers[i])}: {Files(parts[i])} ({Enumerable.Range(0, all.Count).Where(k => parts[i].Contains(all[k])).Sum(k => sizes[k]):N0} bytes)");

            // A language model holding out a fraction: pass 1 measures each part's text to place the cut in the whole.
            IReadOnlyList<DatasetPreparer.PartCut>? cuts = null;
            var fraction = o.Validation.Count == 0;
            var passes = fraction ? 3 : 2;
            if (fraction)
            {
                progress($"pass 1/3: the length of the text on {parts.Count} worker(s), to hold out the last {o.ValidationFraction:P1} for validation");
                var lengths = await OnEveryPartAsync(parts, workers, "measuring", cancelOthers: true, async (i, client, token) =>
                {
                    var reply = await client.PrepareCountAsync(new PrepareCountRequest { PrepareId = prepareId, Part = i, OptionsJson = DatasetPreparer.PartJson(options[i]), Measure = true }, cancellationToken: token).ConfigureAwait(false);
                    return (reply.Length, reply.TrainPieces);
                }, cancel).ConfigureAwait(false);
                try
                {
                    cuts = DatasetPreparer.PlaceCut(o, lengths);
                }
                catch (DataFormatException e)
                {
                    throw new Refusal(StatusCode.InvalidArgument, e.Message);
                }
            }

            progress($"pass {passes - 1}/{passes}: counting {o.Tokenizer.Kind} tokens of the training {(fraction ? "split" : "sources")} on {parts.Count} worker(s)");
            var counts = await OnEveryPartAsync(parts, workers, "counting", cancelOthers: true, async (i, client, token) =>
            {
                var count = new PrepareCountRequest { PrepareId = prepareId, Part = i, OptionsJson = DatasetPreparer.PartJson(options[i]), Cut = -1 };
                if (cuts is not null)
                {
                    count.JoinerCounted = true;
                    count.TrainJoiner = cuts[i].Joiner;
                    count.Cut = cuts[i].Cut;
                    count.AllValidation = cuts[i].AllValidation;
                }
                var reply = await client.PrepareCountAsync(count, cancellationToken: token).ConfigureAwait(false);
                progress($"  part {i + 1} counted by {workers[i].Id}: {reply.Words.Count + reply.Chars.Count:N0} distinct token(s)");
                return new PartCounts
                {
                    Words = new Dictionary<string, long>(reply.Words, StringComparer.Ordinal),
                    Chars = new Dictionary<int, long>(reply.Chars),
                    TrainLabels = [.. reply.TrainLabels],
                    TrainPieces = reply.TrainPieces,
                    ValidationPieces = reply.ValidationPieces,
                };
            }, cancel).ConfigureAwait(false);
            var (tokenizer, labels) = Fit(o, counts, cuts is not null);
            var tokenizerJson = JsonSerializer.Serialize(tokenizer.ToState(), DatasetLayout.TokenizerJson);

            progress($"pass {passes}/{passes}: encoding on {parts.Count} worker(s) (vocabulary {tokenizer.VocabSize:N0}{(labels.Count > 0 ? $", {labels.Count} labels" : "")})");
            var encoded = await OnEveryPartAsync(parts, workers, "encoding", cancelOthers: false, async (i, client, token) =>
            {
                var request = new PrepareEncodeRequest
                {
                    PrepareId = prepareId,
                    Part = i,
                    OptionsJson = DatasetPreparer.PartJson(options[i]),
                    Directory = writer.Directory,
                    TokenizerJson = tokenizerJson,
                    TrainJoiner = counts.Take(i).Any(c => c.TrainPieces),
                    ValidationJoiner = counts.Take(i).Any(c => c.ValidationPieces),
                    Cut = cuts?[i].Cut ?? -1,
                    AllValidation = cuts?[i].AllValidation ?? false,
                };
                request.Labels.AddRange(labels.Names);
                var reply = await client.PrepareEncodeAsync(request, cancellationToken: token).ConfigureAwait(false);
                var part = JsonSerializer.Deserialize<PartEncoded>(reply.ResultJson, DatasetLayout.Json) ?? throw new InvalidDataException("no result");
                progress($"  part {i + 1} encoded by {workers[i].Id}: {part.Train.Tokens + part.Validation.Tokens:N0} token(s) in {part.Train.Shards.Count + part.Validation.Shards.Count} shard(s)");
                return part;
            }, cancel).ConfigureAwait(false);
            cancel.ThrowIfCancellationRequested();
            DatasetManifest manifest;
            try
            {
                manifest = DatasetPreparer.CommitParts(o, writer, tokenizer, labels, encoded);
            }
            catch (DataFormatException e)
            {
                throw new Refusal(StatusCode.InvalidArgument, $"{e.Message}; nothing was written to the output");
            }
            progress($"prepared {request.Output} in {clock.GetElapsedTime(started).TotalSeconds:F1} s on {parts.Count} worker(s): train {manifest.Train.Tokens:N0} tokens in {manifest.Train.Shards.Count} shard(s), validation {manifest.Validation.Tokens:N0}; vocabulary {manifest.VocabSize:N0} ({manifest.TokenDtype})");
            log.LogInformation("{Id}: prepared {Output} from {Sources} source(s) on {Workers} worker(s)", prepareId, request.Output, all.Count, parts.Count);
            return manifest;
        }
        finally
        {
            registry.Release(prepareId);
        }
    }

    static (Dtrain.Data.ITokenizer, LabelSet) Fit(PrepareOptions o, IReadOnlyList<PartCounts> counts, bool joinersCounted)
    {
        try
        {
            return DatasetPreparer.FitParts(o, counts, joinersCounted);
        }
        catch (Exception e) when (e is ArgumentException or DataFormatException)
        {
            throw new Refusal(StatusCode.InvalidArgument, $"{e.Message}; nothing was written to the output");
        }
    }

    static string Describe(WorkerRecord w) => w.Name == "" ? $"{w.Id} ({w.Address})" : $"{w.Id} {w.Name} ({w.Address})";

    static string Files(IReadOnlyList<SourceFile> part) =>
        string.Join(", ", part.Take(3).Select(s => s.Path)) + (part.Count > 3 ? $" and {part.Count - 3} more" : "");

    /// <summary>
    /// Runs <paramref name="call"/> for every part on its worker at once; a failure fails the prepare naming the worker and
    /// the part's files. With <paramref name="cancelOthers"/> (counting: nothing written) the first failure cancels the
    /// other parts; else (encoding) they are let finish, so that no worker still writes into the temporary directory when
    /// it is deleted (a cancelled call may end here before the worker stops).
    /// </summary>
    async Task<List<T>> OnEveryPartAsync<T>(IReadOnlyList<IReadOnlyList<SourceFile>> parts, IReadOnlyList<WorkerRecord> workers, string what, bool cancelOthers,
        Func<int, WorkerControl.WorkerControlClient, CancellationToken, Task<T>> call, CancellationToken cancel)
    {
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var tasks = parts.Select(async (_, i) =>
        {
            try
            {
                return await call(i, clients.For(workers[i]), failed.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (!cancel.IsCancellationRequested && !(e is RpcException { StatusCode: StatusCode.Cancelled } && failed.IsCancellationRequested))
            {
                if (cancelOthers) failed.Cancel();
                var detail = e is RpcException r ? $"{r.StatusCode}: {r.Status.Detail}" : e.Message;
                var code = e is RpcException { StatusCode: StatusCode.InvalidArgument or StatusCode.NotFound } ? StatusCode.InvalidArgument : StatusCode.Aborted;
                throw new Refusal(code, $"worker {Describe(workers[i])} failed {what} part {i + 1} ({Files(parts[i])}): {detail}; nothing was written to the output");
            }
        }).ToList();
        try
        {
            return [.. await Task.WhenAll(tasks).ConfigureAwait(false)];
        }
        catch
        {
            // The first failure (in part order among those that failed for themselves), not a part cancelled because of it.
            var first = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException).OfType<Refusal>().FirstOrDefault();
            cancel.ThrowIfCancellationRequested();
            if (first is not null) throw first;
            throw;
        }
    }

    /// <summary>Contiguous parts of <paramref name="files"/> (in order), at most <paramref name="workers"/>, of about equal bytes: the same files and workers give the same parts.</summary>
    public static List<IReadOnlyList<SourceFile>> Split(IReadOnlyList<SourceFile> files, IReadOnlyList<long> sizes, int workers)
    {
        var k = Math.Max(1, Math.Min(workers, files.Count));
        var total = Math.Max(1, sizes.Sum());
        var parts = new List<IReadOnlyList<SourceFile>>();
        var current = new List<SourceFile>();
        long done = 0;
        for (var i = 0; i < files.Count; i++)
        {
            current.Add(files[i]);
            done += sizes[i];
            var partsLeft = k - parts.Count - 1;
            var filesLeft = files.Count - i - 1;
            if (partsLeft > 0 && (filesLeft == partsLeft || done * k >= total * (parts.Count + 1)))
            {
                parts.Add(current);
                current = [];
            }
        }
        if (current.Count > 0) parts.Add(current);
        return parts;
    }

    /// <summary>The whole prepare's options: sources expanded and checked to be under the data roots, the output too.</summary>
    PrepareOptions Options(PrepareRequest request)
    {
        PrepareOptions template;
        try
        {
            template = DatasetPreparer.PartFromJson(request.OptionsJson);
        }
        catch (JsonException e)
        {
            throw new Refusal(StatusCode.InvalidArgument, $"the prepare options are not valid JSON: {e.Message}");
        }
        var roots = data.Roots;
        const string allow = "have the coordinator's operator allow a directory with `dtrain serve --data-root DIR` (Coordinator:DataRoots)";
        if (roots.Count == 0)
            throw new Refusal(StatusCode.FailedPrecondition, $"this coordinator has no data root, so its workers share no storage to prepare on; {allow}, or prepare locally without --on-cluster");
        var list = string.Join(", ", roots);
        if (request.Sources.Count == 0) throw new Refusal(StatusCode.InvalidArgument, "no sources: name at least one file, directory or glob under the data roots");
        if (request.Validation.Count == 0 && !(Dtrain.Training.Tasks.TrainingTasks.Find(template.Task)?.PredictsNextToken ?? true))
            throw new Refusal(StatusCode.InvalidArgument, "--on-cluster needs --validation sources for classification: holding out --validation-fraction of the records needs the labels of all of them in one seeded shuffle, which the cluster does not do (yet); name validation files with --validation, or prepare locally without --on-cluster");
        if (S3Location.IsS3(request.Output))
            throw new Refusal(StatusCode.InvalidArgument, $"--output {request.Output}: --on-cluster writes a directory under the coordinator's data roots ({list}), not s3:// (yet); prepare locally for s3://");
        if (!Path.IsPathRooted(request.Output))
            throw new Refusal(StatusCode.InvalidArgument, $"--output \"{request.Output}\": --on-cluster needs the absolute path of a directory under the coordinator's data roots ({list}), which the workers see at the same path");
        var existing = Path.GetFullPath(request.Output);
        while (!Directory.Exists(existing) && Path.GetDirectoryName(existing) is { } up) existing = up;
        var physical = DataFile.RealPath(existing);
        if (physical is null || !roots.Any(r => DataFile.IsUnder(physical, r)) || roots.Contains(DataFile.RealPath(request.Output) ?? ""))
            throw new Refusal(StatusCode.InvalidArgument, $"--output \"{request.Output}\" is not a directory under the coordinator's data roots ({list}); {allow}");
        var format = request.Format == "" ? null : request.Format;
        IReadOnlyList<SourceFile> Expand(IEnumerable<string> arguments, string split)
        {
            foreach (var a in arguments)
            {
                if (S3Location.IsS3(a))
                    throw new Refusal(StatusCode.InvalidArgument, $"{a}: --on-cluster reads sources under the coordinator's data roots ({list}), not s3:// (yet); copy them there, or prepare locally");
                if (!Path.IsPathRooted(a))
                    throw new Refusal(StatusCode.InvalidArgument, $"\"{a}\": --on-cluster needs absolute paths under the coordinator's data roots ({list}), which the workers see at the same path");
            }
            IReadOnlyList<SourceFile> files;
            try
            {
                files = SourceFiles.Expand(arguments, split, format);
            }
            catch (DataFormatException e)
            {
                throw new Refusal(StatusCode.InvalidArgument, e.Message);
            }
            foreach (var f in files)
            {
                var real = DataFile.RealPath(f.Path);
                if (real is null || !roots.Any(r => DataFile.IsUnder(real, r)))
                    throw new Refusal(StatusCode.InvalidArgument, $"\"{f.Path}\" is not under the coordinator's data roots ({list}); {allow}");
                try
                {
                    data.OpenUnderRoot(real).Dispose();
                }
                catch (DataFormatException e)
                {
                    throw new Refusal(StatusCode.InvalidArgument, $"\"{f.Path}\" {e.Problem}");
                }
            }
            return files;
        }
        var o = template with
        {
            Train = Expand(request.Sources, DatasetLayout.TrainSplit),
            Validation = request.Validation.Count == 0 ? [] : Expand(request.Validation, DatasetLayout.ValidationSplit),
            Output = Path.GetFullPath(request.Output),
            Force = request.Force,
        };
        try
        {
            DatasetPreparer.CheckOptions(o);
        }
        catch (ArgumentException e)
        {
            throw new Refusal(StatusCode.InvalidArgument, e.Message);
        }
        return o;
    }

    static DatasetWriter Writer(PrepareOptions o)
    {
        try
        {
            return new DatasetWriter(o.Output, o.Force);
        }
        catch (ArgumentException e)
        {
            throw new Refusal(StatusCode.InvalidArgument, e.Message);
        }
    }
}

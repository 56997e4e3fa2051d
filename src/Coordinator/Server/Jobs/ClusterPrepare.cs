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
/// moved into place. A worker that fails, that the registry declares lost (no heartbeat for
/// Coordinator:WorkerTimeoutSeconds) or that leaves fails the prepare at once, naming it and its files: the other
/// workers' calls are cancelled, each is released (it confirms that it stopped writing, or is lost) before the temporary
/// directory is deleted, and nothing is moved into place. A drained worker finishes its part (a part cannot move to
/// another worker), then is cordoned.
/// </summary>
public sealed class ClusterPrepare(DataAccess data, WorkerRegistry registry, WorkerClients clients, CoordinatorOptions options, TimeProvider clock, ILogger<ClusterPrepare> log)
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
        // Watched before the workers are reserved: a worker lost or leaving once it holds the prepare is never missed.
        using var departures = new Departures(registry, prepareId, options, clock);
        var workers = registry.TryReserve(0, prepareId)
            ?? throw new Refusal(StatusCode.FailedPrecondition, $"no idle worker to prepare on ({registry.Capacity().Live} registered, none idle); start workers (`dtrain worker`) or wait for the running jobs, or prepare locally without --on-cluster");
        try
        {
            using var writer = Writer(o);
            var all = o.Train.Concat(o.Validation).ToList();
            var sizes = all.Select(s => new FileInfo(s.Path).Length).ToList();
            var parts = Split(all, sizes, workers.Count);
            progress($"{prepareId}: {all.Count} source file(s), {sizes.Sum():N0} bytes, in {parts.Count} part(s) on {parts.Count} worker(s) (of {workers.Count} idle)");
            // Fewer files than workers: the others are not needed, and go back to the scheduler now.
            foreach (var spare in workers.Skip(parts.Count)) registry.Detach(spare.Id, prepareId);
            workers = [.. workers.Take(parts.Count)];
            try
            {
                return await PassesAsync(request, o, prepareId, writer, all, sizes, parts, workers, departures, progress, started, cancel).ConfigureAwait(false);
            }
            catch
            {
                // Before the temporary directory is deleted (disposing the writer): no worker may still write into it.
                await StopAsync(prepareId, workers, departures, progress).ConfigureAwait(false);
                throw;
            }
        }
        finally
        {
            registry.Release(prepareId);
        }
    }

    async Task<DatasetManifest> PassesAsync(PrepareRequest request, PrepareOptions o, string prepareId, DatasetWriter writer, List<SourceFile> all, List<long> sizes,
        List<IReadOnlyList<SourceFile>> parts, IReadOnlyList<WorkerRecord> workers, Departures departures, Action<string> progress, long started, CancellationToken cancel)
    {
        var partOptions = parts.Select(p => o with
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
            var lengths = await OnEveryPartAsync(parts, workers, "measuring", departures, async (i, client, token) =>
            {
                var reply = await client.PrepareCountAsync(new PrepareCountRequest { PrepareId = prepareId, Part = i, OptionsJson = DatasetPreparer.PartJson(partOptions[i]), Measure = true }, cancellationToken: token).ConfigureAwait(false);
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
        var counts = await OnEveryPartAsync(parts, workers, "counting", departures, async (i, client, token) =>
        {
            var count = new PrepareCountRequest { PrepareId = prepareId, Part = i, OptionsJson = DatasetPreparer.PartJson(partOptions[i]), Cut = -1 };
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
        var encoded = await OnEveryPartAsync(parts, workers, "encoding", departures, async (i, client, token) =>
        {
            var encode = new PrepareEncodeRequest
            {
                PrepareId = prepareId,
                Part = i,
                OptionsJson = DatasetPreparer.PartJson(partOptions[i]),
                Directory = writer.Directory,
                TokenizerJson = tokenizerJson,
                TrainJoiner = counts.Take(i).Any(c => c.TrainPieces),
                ValidationJoiner = counts.Take(i).Any(c => c.ValidationPieces),
                Cut = cuts?[i].Cut ?? -1,
                AllValidation = cuts?[i].AllValidation ?? false,
            };
            encode.Labels.AddRange(labels.Names);
            var reply = await client.PrepareEncodeAsync(encode, cancellationToken: token).ConfigureAwait(false);
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

    /// <summary>
    /// After a failure or a cancel: releases every worker of the prepare that is not lost (WorkerControl.Release with
    /// the prepare's id), which cancels its calls of the prepare and answers once they have ended — once it writes
    /// nothing more into the temporary directory. Each wait ends when the worker answers, fails to, is declared lost, or
    /// after Coordinator:ReleaseTimeoutSeconds (then said, as what may be left behind).
    /// </summary>
    async Task StopAsync(string prepareId, IReadOnlyList<WorkerRecord> workers, Departures departures, Action<string> progress)
    {
        var stopped = await Task.WhenAll(workers.Select(async w =>
        {
            if (registry.StateOf(w.Id) == MembershipState.Lost) return (w, Stopped: (bool?)null);
            using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(options.ReleaseTimeoutSeconds), clock);
            using var either = CancellationTokenSource.CreateLinkedTokenSource(bound.Token, departures.LostToken(w.Id));
            try
            {
                await clients.For(w).ReleaseAsync(new ReleaseRequest { JobId = prepareId, Reason = "the prepare failed" }, cancellationToken: either.Token).ConfigureAwait(false);
                return (w, Stopped: true);
            }
            catch (RpcException e) when (e.StatusCode != StatusCode.Cancelled)
            {
                // Unreachable (its process gone) or an error: it runs none of the prepare's calls to the end.
                log.LogWarning("{Id}: releasing worker {Worker}: {Status}: {Detail}", prepareId, w.Id, e.StatusCode, e.Status.Detail);
                return (w, Stopped: true);
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException)
            {
                return (w, Stopped: bound.IsCancellationRequested ? false : (bool?)null);
            }
        })).ConfigureAwait(false);
        var confirmed = stopped.Where(s => s.Stopped == true).Select(s => s.w.Id).ToList();
        if (confirmed.Count > 0) progress($"stopped on {string.Join(", ", confirmed)}; nothing is written to the output");
        foreach (var (w, _) in stopped.Where(s => s.Stopped == false))
        {
            progress($"worker {Describe(w)} did not confirm within {options.ReleaseTimeoutSeconds:F0} s (Coordinator:ReleaseTimeoutSeconds) that it stopped; the temporary directory beside the output may be left behind");
            log.LogWarning("{Id}: worker {Worker} did not confirm within {Seconds}s that it stopped", prepareId, w.Id, options.ReleaseTimeoutSeconds);
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
    /// Runs <paramref name="call"/> for every part on its worker at once. The first failure — a call that fails, or a
    /// worker declared lost or leaving (<paramref name="departures"/>) — fails the prepare naming the worker and the part's
    /// files, and cancels the other calls (the caller then waits for the workers to stop: <see cref="StopAsync"/>).
    /// </summary>
    async Task<List<T>> OnEveryPartAsync<T>(IReadOnlyList<IReadOnlyList<SourceFile>> parts, IReadOnlyList<WorkerRecord> workers, string what, Departures departures,
        Func<int, WorkerControl.WorkerControlClient, CancellationToken, Task<T>> call, CancellationToken cancel)
    {
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var gate = new Lock();
        Refusal? first = null;
        void Fail(Refusal refusal)
        {
            lock (gate) first ??= refusal;
            failed.Cancel();
        }
        Refusal Failure(int i, StatusCode code, string detail) =>
            new(code, $"worker {Describe(workers[i])} failed {what} part {i + 1} ({Files(parts[i])}): {detail}; nothing was written to the output");
        using var departed = departures.Token.Register(() =>
        {
            var (id, why) = departures.First!.Value;
            var i = workers.ToList().FindIndex(w => w.Id == id);
            if (i >= 0) Fail(Failure(i, StatusCode.Aborted, why));
        });
        var tasks = parts.Select(async (_, i) =>
        {
            try
            {
                return await call(i, clients.For(workers[i]), failed.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (!failed.IsCancellationRequested)
            {
                var detail = e is RpcException r ? $"{r.StatusCode}: {r.Status.Detail}" : e.Message;
                var code = e is RpcException { StatusCode: StatusCode.InvalidArgument or StatusCode.NotFound } ? StatusCode.InvalidArgument : StatusCode.Aborted;
                Fail(Failure(i, code, detail));
                throw;
            }
        }).ToList();
        try
        {
            await Task.WhenAll(tasks).ConfigureAwait(false);
        }
        catch when (first is not null || cancel.IsCancellationRequested)
        {
            // The first failure, not a part cancelled because of it.
        }
        cancel.ThrowIfCancellationRequested();
        lock (gate)
        {
            if (first is not null) throw first;
        }
        return [.. tasks.Select(t => t.Result)];
    }

    /// <summary>
    /// The registry's word on the prepare's workers: the first one declared lost (no heartbeat for
    /// Coordinator:WorkerTimeoutSeconds, or replaced by a new registration) or leaving (its process stops) cancels
    /// <see cref="Token"/>; <see cref="LostToken"/> is cancelled when a given one is lost. A drained worker keeps its part
    /// (the listing says so) and is cordoned once the prepare ends.
    /// </summary>
    sealed class Departures : IDisposable
    {
        readonly WorkerRegistry registry;
        readonly string prepareId;
        readonly CoordinatorOptions options;
        readonly TimeProvider clock;
        readonly CancellationTokenSource any = new();
        readonly Lock gate = new();
        readonly Dictionary<string, CancellationTokenSource> lost = [];

        public Departures(WorkerRegistry registry, string prepareId, CoordinatorOptions options, TimeProvider clock)
        {
            this.registry = registry;
            this.prepareId = prepareId;
            this.options = options;
            this.clock = clock;
            registry.WorkerLost += OnLost;
            registry.WorkerLeft += OnLeft;
            registry.DrainRequested += OnDrained;
        }

        public CancellationToken Token => any.Token;
        /// <summary>The first departure: the worker's id and what happened to it.</summary>
        public (string Id, string Why)? First { get; private set; }

        public CancellationToken LostToken(string id)
        {
            lock (gate)
            {
                if (!lost.TryGetValue(id, out var source)) lost[id] = source = new CancellationTokenSource();
                if (registry.StateOf(id) == MembershipState.Lost) source.Cancel();
                return source.Token;
            }
        }

        void Depart(WorkerRecord w, string why)
        {
            lock (gate)
            {
                if (First is not null) return;
                First = (w.Id, why);
            }
            any.Cancel();
        }

        void OnLost(WorkerRecord w)
        {
            if (w.JobId != prepareId) return;
            CancellationTokenSource? source;
            lock (gate)
            {
                if (!lost.TryGetValue(w.Id, out source)) lost[w.Id] = source = new CancellationTokenSource();
            }
            source.Cancel();
            Depart(w, $"lost: no heartbeat for {options.WorkerTimeoutSeconds:F0}s{w.LastSeenDoing(clock.GetUtcNow())}");
        }

        void OnLeft(WorkerRecord w, string reason)
        {
            if (w.JobId == prepareId) Depart(w, $"left: {reason}");
        }

        void OnDrained(WorkerRecord w, string reason)
        {
            if (w.JobId == prepareId) registry.SetMessage(w.Id, $"{reason}: finishes its part of {prepareId} first (a part cannot move to another worker), then stays cordoned");
        }

        public void Dispose()
        {
            registry.WorkerLost -= OnLost;
            registry.WorkerLeft -= OnLeft;
            registry.DrainRequested -= OnDrained;
            any.Dispose();
            lock (gate)
            {
                foreach (var source in lost.Values) source.Dispose();
            }
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
        CheckWritable(o.Output);
        return o;
    }

    /// <summary>
    /// Refuses, before any worker is asked, an output the coordinator cannot write beside (it creates the temporary
    /// directory, writes the manifest and renames it into place): a read-only volume — the shipped compose file's
    /// <c>datasets</c> — used to fail only once the workers had been reserved, with the file system's bare message.
    /// It leaves nothing behind: the output's missing parent directories it creates to probe are removed again (a
    /// prepare refused after it, e.g. with no idle worker, used to leave them, empty); DatasetWriter creates them for good.
    /// </summary>
    static void CheckWritable(string output)
    {
        var directory = Path.GetDirectoryName(output.TrimEnd('/'));
        if (directory is null) return; // DatasetWriter refuses the root itself
        var probe = Path.Combine(directory, $".{Path.GetFileName(output.TrimEnd('/'))}.probe-{Guid.NewGuid():N}");
        // The directories this check creates, deepest first: the missing ones from the output's parent up.
        var created = new List<string>();
        for (var d = directory; !Directory.Exists(d) && !File.Exists(d) && Path.GetDirectoryName(d) is { } up; d = up) created.Add(d);
        try
        {
            Directory.CreateDirectory(directory); // as DatasetWriter will
            Directory.CreateDirectory(probe);
            Directory.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Refusal(StatusCode.FailedPrecondition,
                $"-o {output}: the coordinator cannot write in {directory} ({e.Message}); the output must be on storage the coordinator and every " +
                "worker can write (the shipped compose file's `datasets` volume is read-only: prepare on the host and copy the dataset in, docs/deploy.md)");
        }
        finally
        {
            // Only while empty: another prepare may have put its own output there meanwhile.
            foreach (var d in created)
            {
                try { Directory.Delete(d); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            }
        }
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
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Refusal(StatusCode.FailedPrecondition, $"-o {o.Output}: the coordinator cannot create the dataset's temporary directory beside it: {e.Message}");
        }
    }
}

using System.CommandLine;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Cli;

/// <summary>`dtrain prepare SOURCES... -o DIR|s3://bucket/prefix`: tokenizes sources once into a dataset of memory-mappable shards (docs/data.md).</summary>
public static class PrepareCommand
{
    public static Command Create()
    {
        var sources = new Argument<string[]>("sources") { Description = "Files, directories (every file below) and globs (*, ?, [abc], ** — quote them; a file or directory that exists under the name given is taken as named); .gz and .zst are decompressed.", Arity = ArgumentArity.OneOrMore };
        var output = new Option<string>("--output", "-o") { Description = "The dataset directory to write (refused when it exists and is not empty, unless --force), or s3://bucket/prefix: prepared in a temporary directory, then uploaded with the manifest last (refused when the prefix holds any object, unless --force; endpoint and credentials from the environment, docs/storage.md).", Required = true };
        var force = new Option<bool>("--force") { Description = "Replace an existing output directory (only once the new dataset is complete); for s3:// the old objects, once the new dataset is prepared (its manifest is deleted first, the new manifest put last)." };
        var task = new Option<string>("--task") { Description = "language_model or classification (the spec's task).", DefaultValueFactory = _ => TrainingTasks.LanguageModel.Kind };
        task.AcceptOnlyFromAmong([.. TrainingTasks.All.Select(t => t.Kind)]);
        var format = new Option<string?>("--format") { Description = "data.format of every source: text, jsonl or csv (default: from each file's extension, .txt/.jsonl/.json/.csv under .gz/.zst)." };
        format.AcceptOnlyFromAmong(DataFormats.Text, DataFormats.Jsonl, DataFormats.Csv);
        var validation = new Option<string[]>("--validation") { Description = "data.validation: validation sources (files, directories, globs); without it --validation-fraction of the training data is held out.", AllowMultipleArgumentsPerToken = true };
        var fraction = new Option<double>("--validation-fraction") { Description = "data.validation_fraction: the held-out share (language model: the text's end; classification: a seeded random subset).", DefaultValueFactory = _ => 0.05 };
        var textField = new Option<string>("--text-field") { Description = "data.text_field: JSONL field or CSV column of the text.", DefaultValueFactory = _ => "text" };
        var labelField = new Option<string>("--label-field") { Description = "data.label_field: JSONL field or CSV column of the label (classification).", DefaultValueFactory = _ => "label" };
        var maxLength = new Option<int?>("--max-length") { Description = "data.max_length: classification, longest record in characters (default 2000)." };
        var overlength = new Option<string?>("--overlength") { Description = "data.overlength: classification, truncate (default), skip or error for longer records." };
        overlength.AcceptOnlyFromAmong([.. OverlengthPolicies.All]);
        var onError = new Option<string>("--on-error") { Description = "data.on_error: fail or skip malformed records.", DefaultValueFactory = _ => ErrorPolicies.Fail };
        onError.AcceptOnlyFromAmong([.. ErrorPolicies.All]);
        var tokenizer = new Option<string>("--tokenizer") { Description = "tokenizer.kind: char or word.", DefaultValueFactory = _ => TokenizerKinds.Char };
        tokenizer.AcceptOnlyFromAmong(TokenizerKinds.Char, TokenizerKinds.Word);
        var minFrequency = new Option<int>("--min-frequency") { Description = "tokenizer.min_frequency.", DefaultValueFactory = _ => 1 };
        var maxVocab = new Option<int>("--max-vocab") { Description = "tokenizer.max_vocab (0 = no limit).", DefaultValueFactory = _ => 0 };
        var lowercase = new Option<bool>("--lowercase") { Description = "tokenizer.lowercase." };
        var seed = new Option<int>("--seed") { Description = "training.seed: chooses the validation records of a classification split (use the job's seed).", DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads") { Description = $"Tokenizing threads, 1 to {PrepareOptions.MaxThreads} (default: all cores); the output is the same for any number. With --on-cluster each worker uses all its cores.", DefaultValueFactory = _ => Environment.ProcessorCount };
        var shardTokens = new Option<long>("--shard-tokens") { Description = "Most tokens per shard.", DefaultValueFactory = _ => 1L << 26 };
        var onCluster = new Option<bool>("--on-cluster")
        {
            Description = "Prepare on the idle workers of the coordinator (--coordinator): SOURCES, --validation and -o are absolute paths under its data roots " +
                "(`dtrain serve --data-root`; not s3://), which every worker sees at the same path; classification needs --validation sources. The same ids as a local prepare (docs/data.md). " +
                "A worker that fails, is declared lost (no heartbeat for Coordinator:WorkerTimeoutSeconds) or leaves fails it at once, naming the worker; nothing is written to the output.",
        };
        var cmd = new Command("prepare",
            "Tokenize sources once into a dataset (a directory, or s3://bucket/prefix): token shards that can be memory-mapped, an index, the tokenizer, SHA-256 of every " +
            "file and of the sources, and a manifest written last (docs/data.md). Holds exactly the ids `dtrain train` makes from the " +
            "same data and options (named as in the job spec). Streams in constant memory on every core.");
        cmd.Arguments.Add(sources);
        foreach (var o in new Option[] { output, force, task, format, validation, fraction, textField, labelField, maxLength, overlength, onError, tokenizer, minFrequency, maxVocab, lowercase, seed, threads, shardTokens, onCluster })
            cmd.Options.Add(o);
        cmd.SetAction(r => r.GetValue(onCluster) ? Remote.Guard(r, client =>
        {
            Check(r);
            return OnCluster(client, new PrepareRequest
            {
                Sources = { r.GetValue(sources)! },
                Validation = { r.GetValue(validation) ?? [] },
                Output = r.GetValue(output)!,
                Force = r.GetValue(force),
                Format = r.GetValue(format) ?? "",
                OptionsJson = DatasetPreparer.PartJson(Options(r, [], "", 1)),
            });
        }) : CliErrors.Guard(() =>
        {
            Check(r);
            var target = r.GetValue(output)!;
            S3DatasetStore? store;
            try
            {
                store = S3Location.IsS3(target) ? new S3DatasetStore(target) : null;
            }
            catch (DatasetStorageException e)
            {
                CliErrors.Error(e.Message);
                return CliErrors.Failed;
            }
            using var s3 = store;
            // To S3: prepared complete in a temporary directory, then published with the manifest last.
            var staging = s3 is null ? null : Path.Combine(Path.GetTempPath(), $"dtrain-prepare-{Guid.NewGuid():N}");
            var uploading = false;
            var options = Options(r,
                SourceFiles.Expand(r.GetValue(sources)!, DatasetLayout.TrainSplit, r.GetValue(format)),
                staging is null ? target : Path.Combine(staging, "dataset"),
                r.GetValue(threads)) with
            {
                Validation = r.GetValue(validation) is { Length: > 0 } v ? SourceFiles.Expand(v, DatasetLayout.ValidationSplit, r.GetValue(format)) : [],
                Force = staging is null && r.GetValue(force),
            };
            using var cancel = new CancellationTokenSource();
            ConsoleCancelEventHandler stop = (_, e) => { e.Cancel = true; cancel.Cancel(); };
            Console.CancelKeyPress += stop;
            try
            {
                if (s3 is not null && !r.GetValue(force) && s3.ListAsync(cancel.Token).GetAwaiter().GetResult() is { Count: > 0 } existing)
                    throw new ArgumentException($"--output {s3.Root}: holds {existing.Count} object(s) already ({string.Join(", ", existing.Take(3).Select(f => f.Name))}{(existing.Count > 3 ? ", ..." : "")}); --force replaces them once the new dataset is prepared");
                if (staging is not null) Directory.CreateDirectory(staging);
                var manifest = DatasetPreparer.Prepare(options, line => Console.Error.WriteLine(line), cancel.Token);
                PrintReport(manifest.Report);
                if (s3 is not null)
                {
                    Console.Error.WriteLine($"uploading to {s3.Root}");
                    uploading = true;
                    s3.PublishDirectoryAsync(options.Output, DatasetLayout.ManifestFile, r.GetValue(force), cancel.Token).GetAwaiter().GetResult();
                }
                Console.WriteLine(s3?.Root ?? options.Output);
                return CliErrors.Ok;
            }
            catch (DatasetStorageException e)
            {
                CliErrors.Error(e.Message);
                return CliErrors.Failed;
            }
            catch (OperationCanceledException) when (cancel.IsCancellationRequested)
            {
                CliErrors.Error(uploading ? $"interrupted while uploading; {s3!.Root} holds no manifest (not a dataset)" : "interrupted; nothing was written to the output");
                return CliErrors.Interrupted;
            }
            finally
            {
                Console.CancelKeyPress -= stop;
                if (staging is not null && Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
            }
        }));
        void Check(ParseResult r)
        {
            var lm = TrainingTasks.For(r.GetValue(task)!).PredictsNextToken;
            if (lm && r.GetValue(maxLength) is not null) throw new ArgumentException("--max-length applies to classification; a language model's text is one stream cut into seq_len chunks");
            if (lm && r.GetValue(overlength) is not null) throw new ArgumentException("--overlength applies to classification; a language model's text is one stream cut into seq_len chunks");
        }

        PrepareOptions Options(ParseResult r, IReadOnlyList<SourceFile> train, string outputPath, int threadCount) => new()
        {
            Train = train,
            Output = outputPath,
            Task = r.GetValue(task)!,
            TextField = r.GetValue(textField)!,
            LabelField = r.GetValue(labelField)!,
            MaxLength = r.GetValue(maxLength) ?? 2000,
            Overlength = r.GetValue(overlength) ?? OverlengthPolicies.Truncate,
            OnError = r.GetValue(onError)!,
            ValidationFraction = r.GetValue(fraction),
            Seed = r.GetValue(seed),
            Tokenizer = new TokenizerSpec { Kind = r.GetValue(tokenizer)!, MinFrequency = r.GetValue(minFrequency), MaxVocab = r.GetValue(maxVocab), Lowercase = r.GetValue(lowercase) },
            Threads = threadCount,
            ShardTokens = r.GetValue(shardTokens),
        };

        return cmd;
    }

    static void PrintReport(DataReport report)
    {
        if (report.Skipped == 0 && report.Truncated == 0) return;
        Console.Error.WriteLine($"{report.Read} records kept, {report.Skipped} skipped, {report.Truncated} truncated");
        foreach (var example in report.SkippedExamples) Console.Error.WriteLine($"  skipped: {example}");
    }

    /// <summary>--on-cluster: the coordinator's progress lines on stderr as they come, the dataset's path on stdout once its manifest is written.</summary>
    static int OnCluster(Jobs.JobsClient client, PrepareRequest request)
    {
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler stop = (_, e) => { e.Cancel = true; cancel.Cancel(); };
        Console.CancelKeyPress += stop;
        try
        {
            using var call = client.Prepare(request, cancellationToken: cancel.Token);
            while (call.ResponseStream.MoveNext(cancel.Token).GetAwaiter().GetResult())
            {
                var e = call.ResponseStream.Current;
                if (e.Message != "") Console.Error.WriteLine(e.Message);
                if (e.ManifestJson == "") continue;
                var manifest = System.Text.Json.JsonSerializer.Deserialize<DatasetManifest>(e.ManifestJson, DatasetLayout.Json)!;
                PrintReport(manifest.Report);
                Console.WriteLine(request.Output);
                return CliErrors.Ok;
            }
            CliErrors.Error("the coordinator ended the prepare without a manifest; the output was not written");
            return CliErrors.Failed;
        }
        catch (Grpc.Core.RpcException e) when (e.StatusCode == Grpc.Core.StatusCode.Cancelled && cancel.IsCancellationRequested)
        {
            CliErrors.Error("interrupted; the coordinator stops the workers and writes nothing to the output");
            return CliErrors.Interrupted;
        }
        finally
        {
            Console.CancelKeyPress -= stop;
        }
    }
}

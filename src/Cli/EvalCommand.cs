using System.CommandLine;
using Dtrain.Data;
using Dtrain.Inference;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Cli;

/// <summary>`dtrain eval CHECKPOINT [--data FILE]`: validation metrics of a trained model, on its own split or on another file.</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var checkpoint = new Argument<string>("checkpoint") { Description = "A checkpoint file (.dtck) or a run directory (the model its run wrote last: newest valid checkpoints/ckpt-*.dtck or model.dtck)." };
        var data = new Option<FileInfo?>("--data") { Description = "Evaluate on this file instead of the job's validation split (same format and fields as in training unless overridden)." };
        var format = new Option<string?>("--format") { Description = "Format of --data: text, jsonl or csv (default: from its extension — .jsonl/.json, .csv, .txt — else the training format)." };
        var textField = new Option<string?>("--text-field") { Description = "Text field/column of --data (default: as in training)." };
        var labelField = new Option<string?>("--label-field") { Description = "Label field/column of --data (default: as in training)." };
        var batch = new Option<int?>("--batch-size") { Description = "Evaluation batch size (default: the job's training.batch_size, as training's own validation used, so the figures match it)." };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var cmd = new Command("eval", "Evaluate a trained model: loss and perplexity/bits per token (language model) or accuracy and macro-F1 (classification).");
        cmd.Arguments.Add(checkpoint);
        foreach (var o in new Option[] { data, format, textField, labelField, batch, device }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            if (r.GetValue(batch) is < 1 or > JobSpecValidator.MaxBatch) throw new ArgumentException($"--batch-size {r.GetValue(batch)} must be in [1, {JobSpecValidator.MaxBatch}]");
            using var model = TrainedModel.Load(r.GetValue(checkpoint)!, r.GetValue(device)!, Console.Error.WriteLine);
            var spec = model.Spec;
            var batchSize = r.GetValue(batch) ?? spec.Training.BatchSize;
            var task = TrainingTasks.For(spec);
            var dataSpec = spec.Data with
            {
                Format = r.GetValue(format) ?? (r.GetValue(data) is { } named && DataFormats.OfExtension(named.Name) is { } byName
                    && task.Reads(byName) ? byName : null) ?? (spec.Data.Format == DataFormats.Synthetic ? DataFormats.Jsonl : spec.Data.Format),
                TextField = r.GetValue(textField) ?? spec.Data.TextField,
                LabelField = r.GetValue(labelField) ?? spec.Data.LabelField,
            };
            if (!DataFormats.All.Contains(dataSpec.Format) || dataSpec.Format == DataFormats.Synthetic)
                throw new ArgumentException($"--format \"{dataSpec.Format}\" must be text, jsonl or csv");
            EvalMetrics metrics;
            string what;
            var report = new DataReportBuilder();
            if (r.GetValue(data) is { } file)
            {
                var records = DatasetReader.Read(file.FullName, task.ReadOptions(dataSpec), report);
                what = file.FullName;
                metrics = task.Evaluate(model.Engine, task.PrepareEvaluation(model.Tokenizer, model.Labels, records), batchSize, 0);
            }
            else
            {
                ThrowIfDataMissing(model);
                var prepared = PreparedData.Load(spec, Directory.GetCurrentDirectory(), model.Tokenizer, task.HasLabels ? model.Labels : null);
                what = "the job's validation split";
                metrics = task.Evaluate(model.Engine, prepared, batchSize, 0);
            }
            var rep = report.ToReport();
            if (rep.Skipped > 0) Console.Error.WriteLine($"skipped {rep.Skipped} malformed record(s): {string.Join("; ", rep.SkippedExamples)}");
            Console.WriteLine($"{model.Path} (step {model.State.Step}) on {what}: {metrics.Count} {task.Unit}{(metrics.Count == 1 ? "" : "s")}");
            Console.WriteLine(metrics.ToString());
            return CliErrors.Ok;
        }));
        return cmd;
    }

    /// <summary>
    /// The job's validation split is read from the data the model was trained on, as its spec names it (a model trained
    /// on a cluster: as its submitter named it). Not on this machine, e.g. a model downloaded to another one: say which
    /// file, and that --data evaluates on a file given here.
    /// </summary>
    static void ThrowIfDataMissing(TrainedModel model)
    {
        var d = model.Spec.Data;
        if (d.Format == DataFormats.Synthetic) return;
        foreach (var (field, named) in new[] { ("train", d.Train), ("validation", d.Validation) })
        {
            if (named is null) continue;
            var here = JobSpecPaths.Resolve(Directory.GetCurrentDirectory(), named)!;
            if (File.Exists(here)) continue;
            throw new FileNotFoundException(
                $"{model.Path} was trained on \"{named}\" (data.{field} of its spec), which is not on this machine{(here == named ? "" : $" ({here})")}: " +
                $"give the file to evaluate on with --data FILE (a copy of it, or other data in the same format)");
        }
    }
}

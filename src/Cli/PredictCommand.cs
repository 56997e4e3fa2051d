using System.CommandLine;
using System.Globalization;
using Dtrain.Data;
using Dtrain.Inference;
using Dtrain.Specs;

namespace Dtrain.Cli;

/// <summary>`dtrain predict CHECKPOINT "text" ... | --file F`: labels with probabilities.</summary>
public static class PredictCommand
{
    public static Command Create()
    {
        var checkpoint = new Argument<string>("checkpoint") { Description = "A classification checkpoint file (.dtck) or run directory." };
        var texts = new Argument<string[]>("text") { Description = "Texts to classify.", Arity = System.CommandLine.ArgumentArity.ZeroOrMore };
        var file = new Option<FileInfo?>("--file", "-f") { Description = "Classify every record of this file (jsonl or csv with the training text field, or plain text: one text per line, empty lines included): one output row per record, in order; a malformed record is an error naming the file and line." };
        var format = new Option<string?>("--format") { Description = "Format of --file: lines, jsonl or csv (default: from the extension; .txt = lines)." };
        var top = new Option<int>("--top") { Description = "Show this many labels per text (1 or more), most probable first.", DefaultValueFactory = _ => 3 };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var cmd = new Command("predict", "Classify texts with a trained classifier; prints the label and the probability of each label.");
        cmd.Arguments.Add(checkpoint);
        cmd.Arguments.Add(texts);
        foreach (var o in new Option[] { file, format, top, device }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var k = r.GetValue(top);
            if (k < 1) throw new ArgumentException($"--top: {k} is out of range; it must be 1 or more (labels shown per text)");
            using var model = TrainedModel.Load(r.GetValue(checkpoint)!, r.GetValue(device)!, Console.Error.WriteLine);
            var inputs = new List<string>(r.GetValue(texts) ?? []);
            // Where each input came from, for messages: "argument 2", "texts.jsonl:7".
            var sources = inputs.Select((_, i) => $"argument {i + 1}").ToList();
            if (r.GetValue(file) is { } f)
            {
                var fmt = r.GetValue(format) ?? (DataFormats.OfExtension(f.Name) is { } named && named != DataFormats.Text ? named : "lines");
                if (fmt == "lines")
                {
                    // One text per line, an empty line included (it is classified as `predict ""` is): one output row per line.
                    var lines = DatasetReader.ReadAllText(f.FullName).Split('\n');
                    var count = lines[^1].Length == 0 ? lines.Length - 1 : lines.Length; // the newline ending the last line starts no line
                    for (var i = 0; i < count; i++)
                    {
                        inputs.Add(lines[i].TrimEnd('\r'));
                        sources.Add($"{f.Name}:{i + 1}");
                    }
                }
                else if (fmt is DataFormats.Jsonl or DataFormats.Csv)
                {
                    // Every record gets a row: a malformed one is an error naming the file and line whatever the training
                    // spec's on_error was, and a long text is cut to max_length below, as a text given as an argument is.
                    var options = ReadOptions.From(model.Spec.Data with { Format = fmt }, labels: false, limitLength: false) with { OnError = ErrorPolicies.Fail };
                    foreach (var record in DatasetReader.Read(f.FullName, options, new DataReportBuilder()))
                    {
                        inputs.Add(record.Text);
                        sources.Add($"{f.Name}:{record.Line}");
                    }
                }
                else
                    throw new ArgumentException($"--format \"{fmt}\" must be lines, jsonl or csv");
            }
            if (inputs.Count == 0) throw new ArgumentException(r.GetValue(file) is { } empty ? $"nothing to classify: {empty.Name} holds no text" : "nothing to classify: give texts as arguments or --file");
            var maxLength = model.Spec.Data.MaxLength;
            var cut = Enumerable.Range(0, inputs.Count).Where(i => inputs[i].Length > maxLength).ToList();
            if (cut.Count > 0)
                Console.Error.WriteLine($"note: {cut.Count} text(s) longer than the model's data.max_length of {maxLength} characters are classified by their first {maxLength} (first: {sources[cut[0]]})");
            var predictions = Predictor.Predict(model, inputs);
            for (var i = 0; i < inputs.Count; i++)
            {
                var p = predictions[i];
                var others = string.Join("  ", p.Probabilities.OrderByDescending(kv => kv.Value).Take(k).Select(kv => $"{kv.Key}={kv.Value.ToString("F3", CultureInfo.InvariantCulture)}"));
                var preview = inputs[i].ReplaceLineEndings(" ");
                if (preview.Length > 60) preview = preview[..57] + "...";
                Console.WriteLine($"{p.Label}\t{p.Probability.ToString("F3", CultureInfo.InvariantCulture)}\t{others}\t{preview}");
            }
            return CliErrors.Ok;
        }));
        return cmd;
    }
}

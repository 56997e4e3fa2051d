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
        var file = new Option<FileInfo?>("--file", "-f") { Description = "Classify every record of this file (jsonl or csv with the training text field, or plain text: one text per line)." };
        var format = new Option<string?>("--format") { Description = "Format of --file: lines, jsonl or csv (default: from the extension; .txt = lines)." };
        var top = new Option<int>("--top") { Description = "Show this many labels per text, most probable first.", DefaultValueFactory = _ => 3 };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var cmd = new Command("predict", "Classify texts with a trained classifier; prints the label and the probability of each label.");
        cmd.Arguments.Add(checkpoint);
        cmd.Arguments.Add(texts);
        foreach (var o in new Option[] { file, format, top, device }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            using var model = TrainedModel.Load(r.GetValue(checkpoint)!, r.GetValue(device)!, Console.Error.WriteLine);
            var inputs = new List<string>(r.GetValue(texts) ?? []);
            if (r.GetValue(file) is { } f)
            {
                var fmt = r.GetValue(format) ?? Path.GetExtension(f.Name).TrimStart('.').ToLowerInvariant() switch
                {
                    "jsonl" or "json" => DataFormats.Jsonl,
                    "csv" => DataFormats.Csv,
                    _ => "lines",
                };
                if (fmt == "lines")
                    inputs.AddRange(DatasetReader.ReadAllText(f.FullName).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0));
                else if (fmt is DataFormats.Jsonl or DataFormats.Csv)
                    inputs.AddRange(DatasetReader.Read(f.FullName, ReadOptions.From(model.Spec.Data with { Format = fmt }, labels: false, limitLength: true), new DataReportBuilder()).Select(x => x.Text));
                else
                    throw new ArgumentException($"--format \"{fmt}\" must be lines, jsonl or csv");
            }
            if (inputs.Count == 0) throw new ArgumentException("nothing to classify: give texts as arguments or --file");
            var k = Math.Max(1, r.GetValue(top));
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

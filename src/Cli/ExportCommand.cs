using System.CommandLine;
using Dtrain.Inference;

namespace Dtrain.Cli;

/// <summary>`dtrain export CHECKPOINT --format onnx -o model.onnx`: the model for ONNX runtimes, with its tokenizer and labels.</summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var checkpoint = new Argument<string>("checkpoint") { Description = "A checkpoint file (.dtck) or run directory (its newest checkpoint), classifier or language model." };
        var format = new Option<string>("--format") { Description = $"Output format: {string.Join(", ", OnnxExport.Formats)}.", DefaultValueFactory = _ => "onnx" };
        var output = new Option<string>("--output", "-o") { Description = "The model file to write (e.g. model.onnx); its description (tokenizer, labels, inputs and outputs) goes beside it as FILE.json.", Required = true };
        var cmd = new Command("export", "Export a trained model to ONNX (opset " + OnnxExport.Opset + ") for ONNX Runtime and other runtimes; see docs/export.md.");
        cmd.Arguments.Add(checkpoint);
        cmd.Options.Add(format);
        cmd.Options.Add(output);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var fmt = r.GetValue(format)!;
            if (!OnnxExport.Formats.Contains(fmt)) throw new ArgumentException($"--format \"{fmt}\" is not supported; supported: {string.Join(", ", OnnxExport.Formats)}");
            var path = r.GetValue(output)!;
            using var model = TrainedModel.Load(r.GetValue(checkpoint)!, "cpu", Console.Error.WriteLine);
            OnnxModelInfo info;
            try
            {
                info = OnnxExport.Write(model, path);
            }
            catch (NotSupportedException e)
            {
                throw new ArgumentException($"{model.Path}: {e.Message}");
            }
            Console.WriteLine($"wrote {path} ({info.Task}, {info.Cell}, {info.Layers} layer(s){(info.Bidirectional ? ", bidirectional" : "")}, step {info.Step}) and {OnnxExport.InfoPath(path)}");
            return CliErrors.Ok;
        }));
        return cmd;
    }
}

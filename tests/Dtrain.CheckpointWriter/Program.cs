using System.Globalization;
using Dtrain.Checkpoints;

// Usage: Dtrain.CheckpointWriter <dir> <step> <sizeMB>
// Saves one checkpoint of about sizeMB into <dir> (keepLast 10). Prints "writing" just before the save,
// "halfway <bytes>" once half of it is written, from then on slows down to ~100 ms per MiB so a test can kill it
// mid-write, and "saved <path>" when done.
if (args.Length != 3
    || !long.TryParse(args[1], NumberStyles.None, CultureInfo.InvariantCulture, out long step)
    || !int.TryParse(args[2], NumberStyles.None, CultureInfo.InvariantCulture, out int sizeMb)
    || sizeMb < 2)
{
    Console.Error.WriteLine("usage: Dtrain.CheckpointWriter <dir> <step> <sizeMB (>= 2)>");
    return 2;
}

var model = new byte[sizeMb * (1L << 20) - 4096];
new Random(1234).NextBytes(model);
var data = new CheckpointData(step, new Dictionary<string, byte[]>
{
    ["model"] = model,
    ["meta.json"] = "{\"writer\":true}"u8.ToArray(),
}, DateTimeOffset.UtcNow);

long half = model.Length / 2;
bool announced = false;
var store = new CheckpointStore(args[0], keepLast: 10);
Console.WriteLine("writing");
string path = store.Save(data, written =>
{
    if (written < half)
        return;
    if (!announced)
    {
        announced = true;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"halfway {written}"));
    }
    Thread.Sleep(100);
});
Console.WriteLine($"saved {path}");
return 0;

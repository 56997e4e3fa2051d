using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server.Auth;

/// <summary>
/// The audit trail: one JSON object per line in DATA_DIR/audit.log (0600, appended and flushed to disk before the
/// call it records returns; `dtrain tokens` appends to the same file) and the same line on the logger category
/// <c>Dtrain.Audit</c>. Fields: time (UTC), event, then who (user, role, token — or auth "off"), peer, and the
/// event's own fields.
/// </summary>
public sealed class AuditLog(string dataDir, ILogger logger, TimeProvider clock)
{
    public const string Category = "Dtrain.Audit";
    public const string FileName = "audit.log";

    private readonly Lock gate = new();

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetFullPath(dataDir), FileName);

    /// <summary>Records <paramref name="event"/> by <paramref name="caller"/> (null: the coordinator itself or a local operator) from <paramref name="peer"/>.</summary>
    public void Write(string @event, Caller? caller, string? peer, params (string Key, object? Value)[] fields)
    {
        var line = Format(clock.GetUtcNow(), @event, caller, peer, fields);
        try
        {
            lock (gate) SecureFiles.AppendLine(Path, line);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The call it records still goes ahead; the line is not lost from the logger.
            logger.LogError("audit log {Path} is not writable ({Message}); the event follows", Path, e.Message);
        }
        logger.LogInformation("{Event} {Audit}", @event, line);
    }

    public static string Format(DateTimeOffset time, string @event, Caller? caller, string? peer, IEnumerable<(string Key, object? Value)> fields)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("time", time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture));
            w.WriteString("event", @event);
            if (caller is not null)
            {
                if (caller.Authenticated)
                {
                    w.WriteString("user", caller.Name);
                    w.WriteString("role", caller.Role.Name());
                    w.WriteString("token", caller.TokenId);
                }
                else w.WriteString("auth", "off");
            }
            if (peer is not null) w.WriteString("peer", peer);
            foreach (var (key, value) in fields)
            {
                switch (value)
                {
                    case null: w.WriteNull(key); break;
                    case string s: w.WriteString(key, s); break;
                    case bool b: w.WriteBoolean(key, b); break;
                    case int i: w.WriteNumber(key, i); break;
                    case long l: w.WriteNumber(key, l); break;
                    case double d: w.WriteNumber(key, d); break;
                    case DateTimeOffset t: w.WriteString(key, t.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture)); break;
                    default: w.WriteString(key, Convert.ToString(value, CultureInfo.InvariantCulture)); break;
                }
            }
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }
}

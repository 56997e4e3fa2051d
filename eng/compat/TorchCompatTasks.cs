// MSBuild tasks (compiled by RoslynCodeTaskFactory) behind eng/TorchCompat.targets.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

/// <summary>Tells whether this machine's libstdc++ lacks the GLIBCXX_3.4.32 that libLibTorchSharp.so needs.</summary>
public class TorchCompatProbe : Task
{
    [Output] public bool Needed { get; set; }
    [Output] public string Reason { get; set; } = "";

    public override bool Execute()
    {
        if (!System.Runtime.InteropServices.RuntimeInformation.IsOSPlatform(System.Runtime.InteropServices.OSPlatform.Linux)) { Reason = "not Linux"; return true; }
        string[] candidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };
        foreach (var path in candidates)
        {
            if (!File.Exists(path)) continue;
            var bytes = File.ReadAllBytes(path);
            var has = IndexOf(bytes, Encoding.ASCII.GetBytes("GLIBCXX_3.4.32\0")) >= 0;
            Needed = !has;
            Reason = has ? path + " provides GLIBCXX_3.4.32" : path + " lacks GLIBCXX_3.4.32";
            return true;
        }
        Reason = "no system libstdc++.so.6 found";
        return true;
    }

    static int IndexOf(byte[] hay, byte[] needle)
    {
        for (int i = 0; i <= hay.Length - needle.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && hay[i + j] == needle[j]) j++;
            if (j == needle.Length) return i;
        }
        return -1;
    }
}

/// <summary>
/// Drops the version binding of the three GCC 13 symbols and makes the GLIBCXX_3.4.32 / CXXABI_1.3.13
/// requirements weak in an ELF64 little-endian shared library, so it loads against GCC 12's libstdc++
/// with libglibcxx_compat.so supplying the symbols.
/// </summary>
public class ElfRelaxVersions : Task
{
    [Required] public string File { get; set; } = "";
    [Output] public bool Changed { get; set; }

    static readonly HashSet<string> Symbols = new()
    {
        "_ZSt21ios_base_library_initv",
        "_ZNSt15__exception_ptr13exception_ptr9_M_addrefEv",
        "_ZNSt15__exception_ptr13exception_ptr10_M_releaseEv",
    };
    static readonly HashSet<string> Versions = new() { "GLIBCXX_3.4.32", "CXXABI_1.3.13" };
    const uint ShtDynsym = 11, ShtGnuVersym = 0x6fffffff, ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 2;

    public override bool Execute()
    {
        var d = System.IO.File.ReadAllBytes(File);
        if (d.Length < 64 || d[0] != 0x7f || d[1] != (byte)'E' || d[4] != 2 || d[5] != 1)
        {
            Log.LogError($"{File}: not an ELF64 little-endian file");
            return false;
        }
        ulong shoff = BitConverter.ToUInt64(d, 0x28);
        int shentsize = BitConverter.ToUInt16(d, 0x3A), shnum = BitConverter.ToUInt16(d, 0x3C);
        var secs = new List<(uint type, ulong off, ulong size, uint link)>();
        for (int i = 0; i < shnum; i++)
        {
            int b = checked((int)shoff + i * shentsize);
            secs.Add((BitConverter.ToUInt32(d, b + 4), BitConverter.ToUInt64(d, b + 24), BitConverter.ToUInt64(d, b + 32), BitConverter.ToUInt32(d, b + 40)));
        }
        var dynsym = secs.Find(s => s.type == ShtDynsym);
        var versym = secs.Find(s => s.type == ShtGnuVersym);
        var verneed = secs.Find(s => s.type == ShtGnuVerneed);
        if (dynsym.size == 0 || versym.size == 0 || verneed.size == 0)
        {
            Log.LogError($"{File}: missing .dynsym/.gnu.version/.gnu.version_r");
            return false;
        }
        int strtab = (int)secs[(int)dynsym.link].off;
        for (int i = 0; i < (int)(dynsym.size / 24); i++)
        {
            uint name = BitConverter.ToUInt32(d, (int)dynsym.off + i * 24);
            if (!Symbols.Contains(CStr(d, strtab + (int)name))) continue;
            int at = (int)versym.off + i * 2;
            if (BitConverter.ToUInt16(d, at) != 1) { d[at] = 1; d[at + 1] = 0; Changed = true; }
        }
        int vstr = (int)secs[(int)verneed.link].off;
        int off = (int)verneed.off;
        while (true)
        {
            int cnt = BitConverter.ToUInt16(d, off + 2);
            uint aux = BitConverter.ToUInt32(d, off + 8), next = BitConverter.ToUInt32(d, off + 12);
            int a = off + (int)aux;
            for (int k = 0; k < cnt; k++)
            {
                ushort flags = BitConverter.ToUInt16(d, a + 4);
                uint name = BitConverter.ToUInt32(d, a + 8), anext = BitConverter.ToUInt32(d, a + 12);
                if (Versions.Contains(CStr(d, vstr + (int)name)) && (flags & VerFlgWeak) == 0)
                {
                    flags |= VerFlgWeak;
                    d[a + 4] = (byte)flags; d[a + 5] = (byte)(flags >> 8);
                    Changed = true;
                }
                if (anext == 0) break;
                a += (int)anext;
            }
            if (next == 0) break;
            off += (int)next;
        }
        if (Changed)
        {
            // Write a new file and rename it over: the output copy may be a hard link into the NuGet cache.
            var tmp = File + ".tmp";
            System.IO.File.WriteAllBytes(tmp, d);
            System.IO.File.Delete(File);
            System.IO.File.Move(tmp, File);
        }
        return true;
    }

    static string CStr(byte[] d, int off)
    {
        int end = Array.IndexOf(d, (byte)0, off);
        return Encoding.ASCII.GetString(d, off, end - off);
    }
}

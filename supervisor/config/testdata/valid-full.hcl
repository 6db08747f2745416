# Every block this version supports, with non-default values.
app {
  command      = ["mariadbd", "--user=mysql"]
  user         = "root"
  workdir      = "/"
  env          = { TZ = "UTC" }
  signal_group = true
  stop_signal  = "SIGTERM"
  stop_timeout = "30s"
  restart {
    policy          = "on-failure"
    max_restarts    = 3
    backoff_initial = "500ms"
    backoff_max     = "10s"
  }
}

data {
  path       = "/var/lib/mysql"
  restore    = "if-empty"
  on_corrupt = "previous"
  exclude    = ["*.sock", "*.pid"]
}

store {
  url           = "s3://backups/mysql?endpoint=127.0.0.1:9000&insecure=true"
  create_bucket = true
}

backup {
  schedule      = "@every 10m"
  notify        = true
  signal        = "SIGUSR1"
  final         = true
  final_timeout = "2m"
  keep {
    last  = 10
    daily = 7
  }
  watch {
    enabled   = false
    debounce  = "2s"
    max_delay = "1m"
  }
  retry {
    initial = "1s"
    max     = "1m"
  }
  hook "pre_backup" {
    command = ["sh", "-c", "echo gtid=0-1-1 > $LIFEBOAT_METADATA_FILE"]
    timeout = "1m"
  }
  stream "mariabackup" {
    command         = ["mariabackup", "--backup", "--stream=mbstream"]
    restore_command = ["mbstream", "-x", "-C", "/var/lib/mysql"]
  }
}

control {
  socket = "/run/lifeboat.sock"
}

telemetry {
  listen = "127.0.0.1:9090"
}

log {
  format = "json"
  level  = "debug"
}

-- The director's device registry (origin::registry::PostgresRegistry; docs/director.md).
-- Applied once by `origin serve --registry postgres://…` and recorded in registry_migrations.
-- A released migration never changes: a change to the schema is a new, higher-numbered file.
--
-- Keys compare byte by byte (COLLATE "C"): listings come in the order the embedded registry
-- gives. Records are `json`, not `jsonb`: the director reads back the very bytes it wrote, and
-- every string JSON can hold is kept (`jsonb` refuses "\u0000").

-- Each vehicle: its whole record as the director's API writes it (VIN, region, vehicle type,
-- home depot, primary key, ECUs with their keys and installed targets, mesh peer id, last
-- report). Region, type and home depot are copied into columns for queries and indexes.
CREATE TABLE vehicles (
    vin text COLLATE "C" PRIMARY KEY,
    region text NOT NULL,
    vehicle_type text NOT NULL,
    home_depot text NOT NULL,
    record json NOT NULL
);
CREATE INDEX vehicles_region_type ON vehicles (region, vehicle_type);
CREATE INDEX vehicles_home_depot ON vehicles (home_depot);

-- Each campaign's last snapshot (origin::service::CampaignRecord): spec, state, waves, members.
CREATE TABLE campaigns (
    id text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);

-- Each campaign's reports counted since its snapshot, by sequence number (the snapshot names
-- the last one it includes; those up to it are dropped).
CREATE TABLE campaign_events (
    campaign text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 0),
    event json NOT NULL,
    PRIMARY KEY (campaign, seq)
);
